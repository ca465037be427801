// swift-tools-version:6.0
// hsmbackup: an open backup archive format for HSMs, and the library and CLI around it.
// Module order (arrows point down only): C shims -> ByteCoding/BackupCrypto/ProcessHardening -> PayloadCodec ->
// Envelope, HSMArchive -> SimulatedHSM, PKCS11HSM (over CPKCS11), ObjectStore -> HSMBackup -> hsmbackup (CLI).
// HSMBackup talks to HSMs through HSMArchive's BackupSource / RestoreTarget only; the CLI opens a PKCS11HSM for --pkcs11.
import PackageDescription

let package = Package(
    name: "hsmbackup",
    platforms: [.macOS(.v13)],
    products: [
        .library(name: "HSMBackup", targets: ["HSMBackup"]),
        .executable(name: "hsmbackup", targets: ["hsmbackup"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        // Schedules and health (issue 18): the Prometheus text format for `status --prometheus`;
        // `make docs` builds the HSMBackup DocC site with the docc plugin.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        .package(url: "https://github.com/swiftlang/swift-docc-plugin", from: "1.5.0"),
    ],
    targets: [
        // C libraries, each behind a shim header. Only BackupCrypto, PayloadCodec and AWSCore (CTLS) import them.
        .systemLibrary(name: "COpenSSL", pkgConfig: "libcrypto",
                       providers: [.apt(["libssl-dev"])]),
        // libssl for AWSCore's HTTPS (TLSConnection.swift is the only Swift that imports it).
        .systemLibrary(name: "CTLS", pkgConfig: "libssl",
                       providers: [.apt(["libssl-dev"])]),
        .systemLibrary(name: "CArchive", pkgConfig: "libarchive",
                       providers: [.apt(["libarchive-dev"])]),
        .systemLibrary(name: "CZstd", pkgConfig: "libzstd",
                       providers: [.apt(["libzstd-dev"])]),

        // PKCS#11 (issue 15): p11-kit's pkcs11.h by path, modules loaded with dlopen; only PKCS11HSM imports it.
        .systemLibrary(name: "CPKCS11", providers: [.apt(["libp11-kit-dev"])]),

        // prctl/setrlimit behind static inline wrappers (prctl is variadic); only ProcessHardening imports it.
        .target(name: "CProcess"),

        .target(name: "ByteCoding"),
        .target(name: "CDurability"),
        .target(name: "Durability", dependencies: ["CDurability"]),
        .target(name: "ProcessHardening", dependencies: ["CProcess"]),
        .target(name: "BackupCrypto", dependencies: ["COpenSSL"]),
        .target(name: "PayloadCodec", dependencies: ["CArchive", "CZstd", "ByteCoding"]),
        .target(name: "Envelope", dependencies: ["BackupCrypto", "ByteCoding", "Durability"]),
        .target(name: "HSMArchive", dependencies: ["BackupCrypto", "ByteCoding", "PayloadCodec"]),
        .target(name: "SimulatedHSM", dependencies: ["HSMArchive", "BackupCrypto", "ByteCoding", "PayloadCodec", "Durability"]),
        .target(name: "PKCS11HSM", dependencies: ["CPKCS11", "HSMArchive", "BackupCrypto", "ByteCoding", "PayloadCodec", "Durability"],
                // The kill tests' pause hook (HSMBACKUP_TEST_PKCS11_PAUSE) exists only in debug builds (§9.6).
                swiftSettings: [.define("HSMBACKUP_TEST_HOOKS", .when(configuration: .debug))]),
        .target(name: "ObjectStore", dependencies: ["BackupCrypto", "ByteCoding", "Durability"]),
        // The S3-compatible object store behind ObjectStore's ReplicatedStorage protocol (issue 16 part B).
        .target(name: "S3Store", dependencies: ["AWSCore", "ObjectStore", "BackupCrypto", "ByteCoding", "Durability"]),
        .target(name: "HSMBackup", dependencies: [
            "Envelope", "HSMArchive", "SimulatedHSM", "ObjectStore", "BackupCrypto", "ByteCoding", "Durability",
        ]),
        // Schedules, `schedule run`, health status and the systemd/cron templates (issue 18).
        .target(name: "Scheduling", dependencies: [
            "HSMBackup", "ObjectStore", "Durability", "Envelope", "SimulatedHSM",
            "HSMArchive", "BackupCrypto", "PKCS11HSM", "S3Store",
            .product(name: "Prometheus", package: "swift-prometheus"),
        ]),
        // Fuzz targets (issue 8): the shared logic, and one runner (libFuzzer or replay).
        .target(name: "FuzzTargets", dependencies: ["Envelope", "HSMArchive", "ObjectStore", "PayloadCodec", "BackupCrypto", "ByteCoding", "CZstd"]),
        .executableTarget(name: "FuzzRunner", dependencies: ["FuzzTargets"]),
        // A child process for the ObjectStore tests (kill -9 during puts, concurrent writers).
        .executableTarget(name: "StoreCrashHelper", dependencies: ["ObjectStore"]),
        // Payload key wrapping throughput: OpenSSL's KWP against AESKeyWrapLanes (release build).
        .executableTarget(name: "KWPBench", dependencies: ["BackupCrypto"]),
        .executableTarget(name: "BenchTool", dependencies: ["BackupCrypto", "SimulatedHSM", "ObjectStore"]), // make bench
        // AWS plumbing (issue 16): SigV4, credentials/region/endpoints, HTTP/HTTPS transport (TLS on
        // libssl, proxies), retries, errors. No FoundationNetworking (and so no libcurl) anywhere.
        .target(name: "AWSCore", dependencies: ["CTLS", "BackupCrypto", "ByteCoding", "Durability"]),
        // The AWS KMS keyring (issue 16), ESDK-compatible EDKs over AWSCore.
        .target(name: "AWSKMS", dependencies: ["AWSCore", "Envelope", "BackupCrypto"]),
        .executableTarget(name: "hsmbackup", dependencies: [
            "HSMBackup", "Envelope", "HSMArchive", "SimulatedHSM", "ObjectStore", "PayloadCodec",
            "BackupCrypto", "ByteCoding", "Durability", "ProcessHardening", "Scheduling",
            "AWSCore", "AWSKMS", "PKCS11HSM", "S3Store",
            .product(name: "ArgumentParser", package: "swift-argument-parser"),
        ]),

        .testTarget(name: "ByteCodingTests", dependencies: ["ByteCoding", "Durability"]),
        .testTarget(name: "BackupCryptoTests", dependencies: ["BackupCrypto", "ByteCoding"],
                    resources: [.copy("Vectors")]),
        .testTarget(name: "EnvelopeTests", dependencies: ["Durability", "Envelope", "BackupCrypto", "ByteCoding"],
                    resources: [.copy("Vectors")]),
        .testTarget(name: "HSMArchiveTests", dependencies: ["Durability", "HSMArchive", "SimulatedHSM", "PayloadCodec", "BackupCrypto", "ByteCoding"]),
        .testTarget(name: "ObjectStoreTests", dependencies: ["Durability", "ObjectStore", "BackupCrypto", "ByteCoding"]),
        .testTarget(name: "HSMBackupTests", dependencies: ["HSMBackup", "Envelope", "HSMArchive", "SimulatedHSM", "ObjectStore", "BackupCrypto", "ByteCoding"]),
        .testTarget(name: "CLITests", dependencies: ["hsmbackup", "ProcessHardening", "Durability"]),
        .testTarget(name: "SchedulingTests", dependencies: ["Scheduling", "ObjectStore", "BackupCrypto"]),
        .testTarget(name: "AWSCoreTests", dependencies: ["AWSCore", "BackupCrypto", "ByteCoding"],
                    resources: [.copy("Vectors")]),
        .testTarget(name: "AWSKMSTests", dependencies: ["AWSKMS", "AWSCore", "Envelope", "BackupCrypto", "ByteCoding", "hsmbackup"]),
        .testTarget(name: "PKCS11Tests", dependencies: ["PKCS11HSM", "hsmbackup", "HSMArchive", "BackupCrypto", "ByteCoding", "ProcessHardening"]),
        .testTarget(name: "S3StoreTests", dependencies: ["S3Store", "ObjectStore", "AWSCore", "BackupCrypto", "ByteCoding", "hsmbackup"]),
        .testTarget(name: "FuzzTargetsTests", dependencies: ["FuzzTargets", "PayloadCodec", "ObjectStore"]),
    ]
)
