import Foundation

/// The systemd units and the crontab line that run `hsmbackup schedule run` (docs/SCHEDULES.md,
/// "Running it every day"). The timer fires hourly (Persistent=true: a machine that was off
/// runs once when it comes back); `schedule run` decides what is due.
public struct UnitOptions: Sendable {
    /// The installed binary (absolute).
    public var binary: String
    /// The home (absolute): the only path the service may write.
    public var home: String
    /// Unit names: `<name>.service` and `<name>.timer`.
    public var name = "hsmbackup"
    /// The timer's OnCalendar= (default hourly).
    public var onCalendar = "hourly"
    /// Run as this user (default: root, or whoever installs the unit as a user unit).
    public var user: String?
    /// After each run, write `status --prometheus` here (its directory becomes writable too).
    public var prometheusFile: String?
    /// Other paths the service must write: the store's replica directories outside the home.
    public var extraWritable: [String] = []
    /// Where systemd reads the PKCS#11 user PIN from (`LoadCredential=hsmbackup-pkcs11-pin:PATH`);
    /// nil: the line is written commented out (no PKCS#11 schedule yet).
    public var pkcs11PINFile: String?
    /// The default of `pkcs11PINFile` when the home has a PKCS#11 schedule.
    public static let defaultPKCS11PINFile = "/etc/hsmbackup/pkcs11-pin"

    public init(binary: String, home: String) { self.binary = binary; self.home = home }

    /// Paths go into unit files and a crontab line unquoted: absolute, and none of the
    /// characters those formats give a meaning (whitespace, quotes, backslash, %, ;, control).
    public func validate() throws {
        var paths = [("--binary", binary), ("--home", home)]
        if let p = prometheusFile { paths.append(("--prometheus", p)) }
        if let p = pkcs11PINFile { paths.append(("--pkcs11-pin-file", p)) }
        paths += extraWritable.map { ("replica directory", $0) }
        for (what, p) in paths {
            guard p.hasPrefix("/") else { throw SchedulingError(.invalidArgument, "\(what) \(p): give an absolute path (units and crontab have no working directory)") }
            if let bad = p.unicodeScalars.first(where: { $0.value < 0x21 || $0.value == 0x7F || "\"'\\%;$`".unicodeScalars.contains($0) }) {
                throw SchedulingError(.invalidArgument, "\(what) \(p): the character U+\(String(bad.value, radix: 16, uppercase: true)) has a meaning in unit files or crontab; choose a path without it")
            }
        }
        // The name becomes two file names in the unit directory: no path in it.
        guard !name.contains("/"), name != ".", name != "..", !name.hasPrefix("-") else {
            throw SchedulingError(.invalidArgument, "--name \"\(name)\": a unit name, not a path (no '/', not '.', '..' or starting with '-')")
        }
        for (what, v) in [("--name", name), ("--on-calendar", onCalendar)] + (user.map { [("--user", $0)] } ?? []) {
            guard !v.isEmpty, !v.unicodeScalars.contains(where: { $0.value < 0x20 || $0.value == 0x7F || "\"'\\%;$`".unicodeScalars.contains($0) }),
                  what == "--on-calendar" || !v.contains(" ") else {
                throw SchedulingError(.invalidArgument, "\(what) \"\(v)\": not usable in a unit file")
            }
        }
    }
}

public enum Units {
    /// `<name>.service`: a oneshot `schedule run`, hardened; the home is the only writable path.
    public static func service(_ o: UnitOptions) -> String {
        let statusLine = o.prometheusFile.map {
            // `-`: a stale status (non-zero) must not mark the run failed; the file is what matters.
            "ExecStopPost=-\(o.binary) --home \(o.home) status --prometheus \($0)\n"
        } ?? ""
        // The PKCS#11 user PIN: systemd copies the file (root-only) into $CREDENTIALS_DIRECTORY,
        // readable by this service alone; `schedule run` reads it there (never argv, never the unit).
        let credential = o.pkcs11PINFile.map {
            "# The PKCS#11 user PIN (a root-only file holding the PIN), read by `schedule run` from $CREDENTIALS_DIRECTORY.\n"
                + "LoadCredential=\(PKCS11PINSource.credentialName):\($0)\n"
        } ?? "# For PKCS#11 schedules: the user PIN from a root-only file, read by `schedule run` from $CREDENTIALS_DIRECTORY.\n"
            + "#LoadCredential=\(PKCS11PINSource.credentialName):\(UnitOptions.defaultPKCS11PINFile)\n"
        // A ReadWritePaths= entry that does not exist makes systemd refuse to start the service
        // (226/NAMESPACE) before hsmbackup runs, and nothing creates the home on a fresh install.
        // A home under /var/lib is the unit's StateDirectory= (systemd creates it, owned by User=,
        // before the sandbox); every writable path is "-"-prefixed, so a missing replica or
        // textfile directory is reported by hsmbackup (status 83, a named error) instead.
        let stateDirectory = o.home.hasPrefix("/var/lib/") && o.home.count > "/var/lib/".count ? String(o.home.dropFirst("/var/lib/".count)) : nil
        let stateLines = stateDirectory.map { "StateDirectory=\($0)\nStateDirectoryMode=0700\n" } ?? ""
        let writable = ([o.home] + o.extraWritable + (o.prometheusFile.map { [directory(of: $0)] } ?? [])).map { "-" + $0 }
        return """
            # Written by `hsmbackup schedule install --systemd`. Runs what is due, once, and exits;
            # \(o.name).timer starts it. Exit codes: 0 all succeeded, 75 another run holds the lock,
            # 80 a schedule or the scrub failed (see `journalctl -u \(o.name).service`).
            [Unit]
            Description=hsmbackup: due HSM backups, their verification, retention and store scrub
            Documentation=man:hsmbackup(1)
            After=local-fs.target network-online.target
            Wants=network-online.target

            [Service]
            Type=oneshot
            # 75: another run held the lock and this one did nothing; not a failure to alert on.
            SuccessExitStatus=75
            \(o.user.map { "User=\($0)\n" } ?? "")Environment=HSMBACKUP_HOME=\(o.home)
            ExecStart=\(o.binary) --home \(o.home) schedule run
            \(statusLine)\(stateLines)\(credential)SyslogIdentifier=\(o.name)
            UMask=0077
            Nice=10
            IOSchedulingClass=best-effort
            IOSchedulingPriority=7
            # Hardening: nothing but the home (and replica directories outside it) is writable;
            # no privilege gain, devices, kernel knobs.
            NoNewPrivileges=yes
            ProtectSystem=strict
            ProtectHome=read-only
            ReadWritePaths=\(writable.joined(separator: " "))
            PrivateTmp=yes
            PrivateDevices=yes
            ProtectKernelTunables=yes
            ProtectKernelModules=yes
            ProtectKernelLogs=yes
            ProtectControlGroups=yes
            ProtectClock=yes
            ProtectHostname=yes
            RestrictSUIDSGID=yes
            RestrictRealtime=yes
            RestrictNamespaces=yes
            LockPersonality=yes
            MemoryDenyWriteExecute=yes
            SystemCallArchitectures=native
            RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6
            CapabilityBoundingSet=
            AmbientCapabilities=

            """
    }

    /// `<name>.timer`: hourly, Persistent=true (a missed run happens at boot), a little jitter.
    public static func timer(_ o: UnitOptions) -> String {
        """
        # Written by `hsmbackup schedule install --systemd`. Enable with:
        #   systemctl daemon-reload && systemctl enable --now \(o.name).timer
        [Unit]
        Description=hsmbackup: check for due HSM backups (\(o.onCalendar))
        Documentation=man:hsmbackup(1)

        [Timer]
        OnCalendar=\(o.onCalendar)
        Persistent=true
        RandomizedDelaySec=5min
        AccuracySec=1min
        Unit=\(o.name).service

        [Install]
        WantedBy=timers.target

        """
    }

    /// One crontab line: hourly at `minute`, output to syslog/journald through logger(1).
    public static func cronLine(_ o: UnitOptions, minute: Int) -> String {
        let status = o.prometheusFile.map { "; \(o.binary) --home \(o.home) status --prometheus \($0) >/dev/null 2>&1" } ?? ""
        return "\(minute) * * * * \(o.binary) --home \(o.home) schedule run 2>&1 | logger -t \(o.name)\(status)"
    }

    static func directory(of path: String) -> String {
        guard let slash = path.lastIndex(of: "/") else { return "." }
        return slash == path.startIndex ? "/" : String(path[..<slash])
    }
}
