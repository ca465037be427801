import BackupCrypto
import ByteCoding
import Foundation
import HSMArchive
import PKCS11HSM
import XCTest

/// A throwaway SoftHSM2 token directory for one test: its own softhsm2.conf (SOFTHSM2_CONF is
/// set for this process, and passed to every child), tokens made with softhsm2-util.
/// SoftHSM reads SOFTHSM2_CONF at C_Initialize; PKCS11Module finalizes the module once nothing
/// holds it, so each test's first open reads its own configuration.
final class SoftHSMFixture {
    static let module = "/usr/lib/softhsm/libsofthsm2.so"
    static let soPIN = "so-pin-0001"
    static let userPIN = "user-pin-0001"
    let dir: String
    let conf: String

    /// Skips when SoftHSM or the tools are missing, unless HSMBACKUP_REQUIRE_EXTERNAL=1 (make test), where it fails.
    init(file: StaticString = #filePath, line: UInt = #line) throws {
        let missing = [Self.module, "/usr/bin/softhsm2-util", "/usr/bin/pkcs11-tool"].filter { !FileManager.default.fileExists(atPath: $0) }
        if !missing.isEmpty {
            let message = "SoftHSM2 / OpenSC missing (\(missing.joined(separator: ", "))): run `make deps`"
            if ProcessInfo.processInfo.environment["HSMBACKUP_REQUIRE_EXTERNAL"] == "1" {
                XCTFail(message, file: file, line: line)
                throw XCTSkip("failed: " + message)
            }
            throw XCTSkip(message)
        }
        dir = FileManager.default.temporaryDirectory.appendingPathComponent("softhsm-\(UUID().uuidString)").path
        try FileManager.default.createDirectory(atPath: dir + "/tokens", withIntermediateDirectories: true)
        conf = dir + "/softhsm2.conf"
        try "directories.tokendir = \(dir)/tokens\nobjectstore.backend = file\nlog.level = ERROR\nslots.removable = false\n"
            .write(toFile: conf, atomically: true, encoding: .utf8)
        setenv("SOFTHSM2_CONF", conf, 1)
    }

    deinit { try? FileManager.default.removeItem(atPath: dir) }

    var environment: [String: String] { ["SOFTHSM2_CONF": conf] }

    /// Runs a tool with this fixture's SOFTHSM2_CONF; returns (status, stdout+stderr).
    @discardableResult
    func tool(_ path: String, _ args: [String], check: Bool = true) throws -> (Int32, String) {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: path)
        p.arguments = args
        var env = ProcessInfo.processInfo.environment
        env["SOFTHSM2_CONF"] = conf
        p.environment = env
        let out = Pipe()
        p.standardOutput = out
        p.standardError = out
        try p.run()
        let data = out.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        let text = String(decoding: data, as: UTF8.self)
        if check && p.terminationStatus != 0 { XCTFail("\(path) \(args.joined(separator: " ")) failed: \(text)") }
        return (p.terminationStatus, text)
    }

    /// A fresh token (test PINs; softhsm2-util takes them as arguments, which hsmbackup never does).
    func initToken(_ label: String) throws {
        try tool("/usr/bin/softhsm2-util", ["--init-token", "--free", "--label", label, "--so-pin", Self.soPIN, "--pin", Self.userPIN])
    }

    static func pin(_ s: String) -> SecureBytes { SecureBytes(copying: Array(s.utf8)) }

    func provision(_ label: String, manufacturer: String, keys: BackupKeys) throws -> ProvisionReport {
        try PKCS11HSM.provision(modulePath: Self.module, tokenLabel: label, soPIN: Self.pin(Self.soPIN), userPIN: Self.pin(Self.userPIN),
                                manufacturerId: manufacturer, mkbk: keys.mkbk, akbk: keys.akbk)
    }

    func open(_ label: String, options: PKCS11Options = PKCS11Options()) throws -> PKCS11HSM {
        try PKCS11HSM(modulePath: Self.module, tokenLabel: label, userPIN: Self.pin(Self.userPIN), options: options)
    }

    /// A logged-in user session on `label`.
    func session(_ label: String) throws -> PKCS11Session {
        let m = try PKCS11Module.open(path: Self.module)
        let s = try m.openSession(slot: try m.token(labelled: label).slot)
        try s.login(user: CK.userUser, pin: Self.pin(Self.userPIN))
        return s
    }

    /// Token objects on `label` that are not hsmbackup's own keys.
    func objectCount(_ label: String) throws -> Int {
        let s = try session(label)
        return try s.find([.bool(0x1, true)]).filter { h in
            guard case .success(.bytes(let b)) = try s.attribute(h, 0x3, as: .bytes) else { return true }
            let l = String(decoding: b, as: UTF8.self)
            return !l.hasPrefix(PKCS11Labels.pbkPrefix) && !l.hasPrefix(PKCS11Labels.tokenPBKPrefix)
        }.count
    }
}

struct BackupKeys {
    let mkbk: ManufacturerBackupKey
    let akbk: OperatorBackupKey
    static func random() throws -> BackupKeys { BackupKeys(mkbk: try .random(), akbk: try .random()) }
}

/// The objects a test token holds: every type the issue names, plus two that cannot be backed up.
enum TestObjects {
    static let p256 = Hex.decode("06082a8648ce3d030107")!
    static let p384 = Hex.decode("06052b81040022")!
    static let dataValue = Array("the configuration a data object keeps".utf8)
    static let certValue: [UInt8] = Array((0..<300).map { UInt8(truncatingIfNeeded: $0 * 7 + 3) })
    /// Backed up: 2 AES, 3 generic secrets, 4 key pairs (8 objects), a data object, a certificate.
    static let backedUp = 15
    static let unbackable = 2

    static func secret(_ s: PKCS11Session, _ type: UInt64, _ mech: UInt64, bytes: UInt64, label: String, id: UInt8,
                       sensitive: Bool, extractable: Bool = true, wrapWithTrusted: Bool = false, encrypt: Bool, sign: Bool) throws {
        _ = try s.generateKey(mech, [
            .ulong(0x0, CK.oSecretKey), .ulong(0x100, type), .ulong(0x161, bytes), .bool(0x1, true), .bool(0x2, true),
            .bool(0x103, sensitive), .bool(0x162, extractable), .bool(0x210, wrapWithTrusted), .bool(0x104, encrypt), .bool(0x105, encrypt),
            .bool(0x108, sign), .bool(0x10A, sign), .bytes(0x3, Array(label.utf8)), .bytes(0x102, [id])])
    }

    static func pair(_ s: PKCS11Session, rsaBits: UInt64? = nil, curve: [UInt8]? = nil, label: String, id: UInt8) throws {
        var pub: [Attribute] = [.bool(0x1, true), .bool(0x10A, true), .bool(0x104, false), .bytes(0x3, Array(label.utf8)), .bytes(0x102, [id])]
        if let rsaBits { pub += [.ulong(0x121, rsaBits), .bytes(0x122, [1, 0, 1])] }
        if let curve { pub.append(.bytes(0x180, curve)) }
        let priv: [Attribute] = [.bool(0x1, true), .bool(0x2, true), .bool(0x103, true), .bool(0x162, true), .bool(0x108, true),
                                 .bool(0x105, false), .bytes(0x3, Array(label.utf8)), .bytes(0x102, [id])]
        _ = try s.generateKeyPair(rsaBits != nil ? CK.mRSAKeyPairGen : CK.mECKeyPairGen, publicKey: pub, privateKey: priv)
    }

    /// Fills a token; `unbackable` adds an unextractable key and a wrap-with-trusted key.
    static func populate(_ s: PKCS11Session, unbackable: Bool = true) throws {
        let aesGen: UInt64 = 0x1080, genericGen: UInt64 = 0x350
        try secret(s, CK.kAES, aesGen, bytes: 16, label: "aes-128", id: 1, sensitive: true, encrypt: true, sign: false)
        try secret(s, CK.kAES, aesGen, bytes: 32, label: "aes-256", id: 2, sensitive: false, encrypt: true, sign: false)
        try secret(s, CK.kGenericSecret, genericGen, bytes: 36, label: "hmac-36", id: 3, sensitive: false, encrypt: false, sign: true)
        try secret(s, CK.kGenericSecret, genericGen, bytes: 13, label: "secret-13", id: 4, sensitive: false, encrypt: false, sign: false)
        try secret(s, CK.kGenericSecret, genericGen, bytes: 45, label: "hmac-45", id: 5, sensitive: true, encrypt: false, sign: true)
        try pair(s, rsaBits: 2048, label: "rsa-2048", id: 0x10)
        try pair(s, rsaBits: 3072, label: "rsa-3072", id: 0x11)
        try pair(s, curve: p256, label: "ec-p256", id: 0x20)
        try pair(s, curve: p384, label: "ec-p384", id: 0x21)
        _ = try s.create([.ulong(0x0, CK.oData), .bool(0x1, true), .bool(0x2, true), .bytes(0x3, Array("config".utf8)),
                          .bytes(0x10, Array("hsmbackup-test".utf8)), .bytes(0x11, dataValue)])
        _ = try s.create([.ulong(0x0, CK.oCertificate), .ulong(0x80, 0), .bool(0x1, true), .bytes(0x3, Array("rsa-2048".utf8)),
                          .bytes(0x102, [0x10]), .bytes(0x101, Array("CN=test".utf8)), .bytes(0x11, certValue)])
        if unbackable {
            try secret(s, CK.kAES, aesGen, bytes: 32, label: "aes-locked", id: 0x30, sensitive: true, extractable: false, encrypt: true, sign: false)
            try secret(s, CK.kAES, aesGen, bytes: 32, label: "aes-wrap-with-trusted", id: 0x31, sensitive: true, wrapWithTrusted: true,
                       encrypt: true, sign: false)
        }
    }

    /// The one object on `s` with this class and label.
    static func handle(_ s: PKCS11Session, _ cls: UInt64, _ label: String) throws -> UInt64 {
        let found = try s.find([.ulong(0x0, cls), .bool(0x1, true), .bytes(0x3, Array(label.utf8))])
        guard found.count == 1 else { throw PKCS11Error(.invalidArgument, "\(found.count) objects \(label) of class \(cls)") }
        return found[0]
    }

    static func value(_ s: PKCS11Session, _ h: UInt64) throws -> [UInt8] {
        guard case .bytes(let b) = try s.required(h, 0x11, as: .bytes) else { return [] }
        return b
    }
}
