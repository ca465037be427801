/// The rules for an HSM's identity strings (spec/FORMAT.md §4.3.2), in one place because four
/// layers carry them: the HSM when it is created, the inner header (§4.3), the archive's public
/// metadata (§3.8) and the store's catalog entries (§5.8). A string that passes here passes every
/// layer, so an HSM that could be created can always be backed up, stored, listed and restored.
public enum IdentityRules {
    public enum Field: String, CaseIterable, Sendable {
        case manufacturerId = "manufacturer id"
        case model
        case firmwareVersion = "firmware version"
        case serialNumber = "serial number"
        case hsmId = "HSM id"
        case clusterId = "cluster id"

        /// Inclusive byte-length bounds of the UTF-8.
        public var byteRange: ClosedRange<Int> {
            switch self {
            case .manufacturerId, .hsmId, .clusterId: return 1...128
            case .model, .firmwareVersion: return 1...256
            case .serialNumber: return 0...256
            }
        }
    }

    /// Why a value breaks its field's rule, or nil when it is valid.
    public static func problem(_ field: Field, _ value: String) -> String? {
        let bytes = Array(value.utf8)
        guard field.byteRange.contains(bytes.count) else {
            return "\(field.rawValue) is \(bytes.count) bytes; it must be \(field.byteRange.lowerBound)...\(field.byteRange.upperBound) bytes of UTF-8"
        }
        if field == .clusterId {
            // A store key segment (§5.2): it names the cluster's policy object.
            guard bytes.allSatisfy(isSegmentByte) else {
                return "cluster id \"\(escaped(value))\" may hold only A-Z a-z 0-9 . _ -"
            }
            guard bytes.first != UInt8(ascii: ".") else { return "cluster id may not start with '.'" }
            return nil
        }
        if let c = value.unicodeScalars.first(where: isControl) {
            return "\(field.rawValue) holds the control character U+\(String(c.value, radix: 16, uppercase: true))"
        }
        return nil
    }

    /// `[A-Za-z0-9._-]`, the alphabet of a store key segment (§5.2).
    public static func isSegmentByte(_ b: UInt8) -> Bool {
        (b >= 0x30 && b <= 0x39) || (b >= 0x41 && b <= 0x5A) || (b >= 0x61 && b <= 0x7A)
            || b == UInt8(ascii: ".") || b == UInt8(ascii: "_") || b == UInt8(ascii: "-")
    }

    /// C0 controls, DEL and C1 controls: nothing a terminal, a log line or a file name should get.
    public static func isControl(_ s: Unicode.Scalar) -> Bool {
        s.value < 0x20 || (s.value >= 0x7F && s.value <= 0x9F)
    }

    private static func escaped(_ s: String) -> String {
        String(s.unicodeScalars.map { isControl($0) ? "?" : Character($0) })
    }
}
