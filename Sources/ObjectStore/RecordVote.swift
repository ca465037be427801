// The replicas' vote on an object's checksum record (spec/FORMAT.md section 5): the record held by
// most replicas is the reference (ties: the lowest replica index); a replica whose record differs
// is a conflict. One rule for every backend, so the local and the S3 store cannot drift apart.
public enum RecordVote {
    /// Splits `opened` (replicas whose record parsed) into those agreeing with the reference
    /// record and those disagreeing, each in the order given.
    public static func split<T>(_ opened: [T], recordBytes: (T) -> [UInt8], replica: (T) -> Int) -> (agreeing: [T], disagreeing: [T]) {
        var votes: [[UInt8]: Int] = [:]
        for o in opened { votes[recordBytes(o), default: 0] += 1 }
        guard let best = opened.max(by: { a, b in
            let va = votes[recordBytes(a)]!, vb = votes[recordBytes(b)]!
            return va != vb ? va < vb : replica(a) > replica(b)
        }) else { return ([], []) }
        let reference = recordBytes(best)
        var agreeing: [T] = [], disagreeing: [T] = []
        for o in opened {
            if recordBytes(o) == reference { agreeing.append(o) } else { disagreeing.append(o) }
        }
        return (agreeing, disagreeing)
    }
}
