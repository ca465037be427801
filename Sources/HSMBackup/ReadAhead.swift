import Foundation

/// Runs a producer on its own thread, ahead of the caller, and hands what it makes over in
/// batches (issue 17: a verify or restore reads the store, checks the replica's chunk digests
/// and decrypts the envelope's frames on this thread while the caller's thread parses and checks
/// what came before). Items arrive in order; the producer's error, or its end, arrives after the
/// last item it made. At most `maximumBatches` batches of `batchItems` items wait, so memory is
/// bounded whatever the stream's length, and one lock hand-off moves a whole batch.
///
/// One consumer. Whatever the producer touches belongs to it until the consumer has seen the end
/// or the error (the producer has returned then), or until `stop()` returns.
final class ReadAhead<Item>: @unchecked Sendable {
    enum Step {
        case item(Item)
        case end
        case failed(Error)
    }

    private let condition = NSCondition()
    private var ready: [[Step]] = []
    private var current: [Step] = []
    private var position = 0
    private var stopped = false
    private var running = true
    private let maximumBatches: Int
    private let batchItems: Int
    private let produce: () throws -> Item?

    /// `produce` returns the next item, nil at the end, or throws; it runs on the new thread only.
    init(maximumBatches: Int = 3, batchItems: Int = 8, produce: @escaping () throws -> Item?) {
        self.maximumBatches = maximumBatches
        self.batchItems = batchItems
        self.produce = produce
        let t = Thread { [self] in self.run() }
        t.name = "hsmbackup-read-ahead"
        t.start()
    }

    deinit { stop() }

    /// The next item, the end, or the producer's error (after which `next` keeps returning it).
    func next() -> Step {
        if position == current.count {
            condition.lock()
            while ready.isEmpty { condition.wait() }
            current = ready.removeFirst()
            condition.broadcast()
            condition.unlock()
            position = 0
        }
        let step = current[position]
        switch step {
        case .item: position += 1
        case .end, .failed: break
        }
        return step
    }

    /// Stops the producer after the item it is making and waits until it has returned.
    func stop() {
        condition.lock()
        stopped = true
        condition.broadcast()
        while running { condition.wait() }
        ready = []
        condition.unlock()
    }

    private func run() {
        var batch: [Step] = []
        batch.reserveCapacity(batchItems + 1)
        var done = false
        while !done {
            condition.lock()
            let stop = stopped
            condition.unlock()
            if stop { break }
            do {
                if let item = try produce() { batch.append(.item(item)) } else { batch.append(.end); done = true }
            } catch {
                batch.append(.failed(error))
                done = true
            }
            if done || batch.count >= batchItems {
                condition.lock()
                while ready.count >= maximumBatches && !stopped { condition.wait() }
                if !stopped { ready.append(batch) }
                condition.broadcast()
                condition.unlock()
                batch = []
                batch.reserveCapacity(batchItems + 1)
            }
        }
        condition.lock()
        running = false
        condition.broadcast()
        condition.unlock()
    }
}
