import Foundation

/// Runs one function over a stream of jobs on worker threads and hands the results back in
/// submission order, on the caller's thread (issue 7: compress, wrap and unwrap chunks on every
/// core while the caller writes or parses what came before). At most `maximumInFlight` jobs are
/// queued or running or waiting to be delivered, so memory is bounded by that many jobs' inputs
/// and outputs whatever the stream's length.
///
/// Not reentrant: one caller thread submits and drains. After `shutdown()` queued jobs are
/// dropped (handed to `discardInput`, so their buffers can be wiped) and workers exit.
public final class OrderedPipeline<Input, Output>: @unchecked Sendable {
    private let condition = NSCondition()
    private var queue: [(sequence: Int, input: Input)] = []
    private var results: [Int: Output] = [:]
    private var submitted = 0
    private var delivered = 0
    private var closed = false
    private var started = false
    private let workers: Int
    public let maximumInFlight: Int
    private let work: (Input, Int) -> Output
    private let discardInput: (inout Input) -> Void
    private let discardOutput: (inout Output) -> Void

    /// One worker per active core by default, at most 8; two more jobs in flight than workers, so
    /// every worker has its next job ready while the caller handles a result.
    public static var defaultWorkers: Int { max(1, min(8, ProcessInfo.processInfo.activeProcessorCount)) }

    /// `work(input, worker)` runs on worker `worker` (0 ..< workers), so it may use per-worker state.
    public init(workers: Int = OrderedPipeline.defaultWorkers, maximumInFlight: Int? = nil,
         discardInput: @escaping (inout Input) -> Void = { _ in }, discardOutput: @escaping (inout Output) -> Void = { _ in },
         work: @escaping (Input, Int) -> Output) {
        precondition(workers >= 1)
        self.workers = workers
        self.maximumInFlight = maximumInFlight ?? workers + 2
        self.work = work
        self.discardInput = discardInput
        self.discardOutput = discardOutput
    }

    /// Queues a job; delivers every result that is ready, in order; blocks (delivering) while
    /// `maximumInFlight` jobs are outstanding. A throwing `deliver` stops the delivery; the
    /// caller should then `shutdown()`.
    public func submit(_ input: Input, deliver: (Output) throws -> Void) throws {
        condition.lock()
        precondition(!closed, "submit after shutdown")
        if !started { startWorkers() }
        queue.append((submitted, input))
        submitted += 1
        // Only workers wait for a job (the one consumer is this thread): wake one, not all
        // (issue 17: every needless wake-up is a futex round trip and a context switch).
        condition.signal()
        condition.unlock()
        try deliverReady(deliver, waitWhile: { self.submitted - self.delivered >= self.maximumInFlight })
    }

    /// Waits for every submitted job and delivers the rest, in order.
    public func drain(_ deliver: (Output) throws -> Void) throws {
        try deliverReady(deliver, waitWhile: { self.delivered < self.submitted })
    }

    /// Stops the workers after their current job; queued and undelivered work is discarded.
    public func shutdown() {
        condition.lock()
        closed = true
        for i in queue.indices { discardInput(&queue[i].input) }
        queue.removeAll()
        for key in Array(results.keys) {
            var out = results.removeValue(forKey: key)!
            discardOutput(&out)
        }
        condition.broadcast()
        condition.unlock()
    }

    private func deliverReady(_ deliver: (Output) throws -> Void, waitWhile mustWait: () -> Bool) throws {
        while true {
            condition.lock()
            while results[delivered] == nil, mustWait() { condition.wait() }
            guard let out = results.removeValue(forKey: delivered) else {
                condition.unlock()
                return
            }
            delivered += 1
            // Nobody waits for a delivery (workers wait for jobs, the consumer is this thread).
            condition.unlock()
            try deliver(out)
        }
    }

    private func startWorkers() {
        started = true
        for w in 0..<workers {
            let t = Thread { [self] in self.run(worker: w) }
            t.name = "hsmbackup-chunks-\(w)"
            t.start()
        }
    }

    private func run(worker: Int) {
        while true {
            condition.lock()
            while queue.isEmpty, !closed { condition.wait() }
            if closed {
                condition.unlock()
                return
            }
            let job = queue.removeFirst()
            condition.unlock()
            var out = work(job.input, worker)
            condition.lock()
            if closed { discardOutput(&out) } else { results[job.sequence] = out }
            condition.broadcast()
            condition.unlock()
        }
    }
}
