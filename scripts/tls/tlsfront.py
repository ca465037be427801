#!/usr/bin/env python3
"""A loopback HTTPS server for the TLS tests (AWSCoreTests/TLSTransportTests, the KMS and S3 CLI
TLS tests): it terminates TLS with a certificate from scripts/tls/testpki.sh and either forwards
each request to a plain-HTTP upstream (the moto server of scripts/aws/with-moto.sh) unchanged --
method, path, headers including Host, body -- so SigV4 signatures made for https://localhost:PORT
verify upstream, or answers the built-in test paths below itself. Standard library only.

  tlsfront.py --cert C --key K [--upstream http://127.0.0.1:P] [--host 127.0.0.1|::1]
              [--tls-max 1.1|1.2] [--idle-close SECONDS] [--no-close-notify]

  --tls-max 1.1     offer TLS 1.0 and 1.1 only (security level 0, as an old appliance would)
  --tls-max 1.2     offer TLS 1.2 only
  --idle-close S    close a kept-alive connection that waited S seconds for its next request
                    (default 60), with close_notify unless --no-close-notify

Built-in paths (never forwarded):
  /__tls/bytes?n=N[&chunked=1]    N bytes (byte i is i % 251), Content-Length or chunked
  /__tls/eof?n=N&notify=0|1       N bytes delimited by the end of the connection; with notify=1
                                  the server sends close_notify first, with 0 it just closes
  /__tls/stall                    never answers (until the client goes)
  /__tls/drop-next                answers "ok"; the next request on this connection is read and
                                  the connection closed without an answer
  /__tls/echo                     answers the request body

Prints "PORT STATSPORT" on its first line, then serves until killed. STATSPORT is a plain-HTTP
port on 127.0.0.1: GET /stats returns JSON counters (TCP connections, completed handshakes,
failed handshakes with their reasons, requests, SNI names seen ("(none)" for a ClientHello
without SNI), TLS versions, idle closes, the X-Amz-Target of each request that had one (KMS)).
"""
import argparse, http.client, http.server, json, socket, ssl, sys, threading, urllib.parse, warnings

lock = threading.Lock()
stats = {"connections": 0, "handshakes": 0, "handshake_failures": 0, "handshake_errors": [], "requests": 0,
         "forwarded": 0, "sni": [], "versions": [], "idle_closes": 0, "amz_targets": []}
HOP = {"connection", "keep-alive", "proxy-connection", "te", "trailer", "transfer-encoding", "upgrade"}
PATTERN = bytes(i % 251 for i in range(251))


def pattern(n):
    return (PATTERN * (n // 251 + 1))[:n]


def bump(key, value=1):
    with lock:
        if isinstance(stats[key], list):
            stats[key].append(value)
        else:
            stats[key] += value


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cert", required=True)
    ap.add_argument("--key", required=True)
    ap.add_argument("--upstream")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--tls-max", choices=["1.1", "1.2"])
    ap.add_argument("--idle-close", type=float, default=60)
    ap.add_argument("--no-close-notify", action="store_true")
    args = ap.parse_args()
    up = urllib.parse.urlparse(args.upstream) if args.upstream else None

    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(args.cert, args.key)
    if args.tls_max == "1.1":
        warnings.simplefilter("ignore", DeprecationWarning)
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
        ctx.set_ciphers("DEFAULT:@SECLEVEL=0")
    elif args.tls_max == "1.2":
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    ctx.sni_callback = lambda sslobj, name, c: bump("sni", name if name else "(none)")

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    listener = socket.socket(family, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((args.host, 0))
    listener.listen(64)

    class Stats(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            with lock:
                data = json.dumps(stats).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    stats_server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Stats)
    threading.Thread(target=stats_server.serve_forever, daemon=True).start()
    print(listener.getsockname()[1], stats_server.server_address[1], flush=True)

    def close(tls, reader, notify):
        try:
            reader.close()
        except OSError:
            pass
        if notify:
            # unwrap() sends close_notify, then waits for the peer's: not for long.
            try:
                tls.settimeout(0.2)
                tls.unwrap().close()
                return
            except (OSError, ValueError):
                pass
        try:
            tls.close()
        except OSError:
            pass

    def answer(tls, status, reason, body=b"", headers=(), head_only=False):
        h = "HTTP/1.1 %d %s\r\n" % (status, reason)
        for k, v in headers:
            h += "%s: %s\r\n" % (k, v)
        if not any(k.lower() == "content-length" for k, _ in headers) and status not in (204, 304):
            h += "Content-Length: %d\r\n" % len(body)
        tls.sendall(h.encode("latin-1") + b"\r\n" + (b"" if head_only else body))

    def forward(state, method, target, headers, body):
        conn = state.get("upstream")
        if conn is None:
            conn = http.client.HTTPConnection(up.hostname, up.port, timeout=120)
            state["upstream"] = conn
        try:
            conn.putrequest(method, target, skip_host=True, skip_accept_encoding=True)
            for k, v in headers:
                if k.lower() not in HOP and k.lower() != "content-length":
                    conn.putheader(k, v)
            if body or method in ("PUT", "POST"):
                conn.putheader("Content-Length", str(len(body)))
            conn.endheaders(body if body else None)
            resp = conn.getresponse()
            data = resp.read()
        except (OSError, http.client.HTTPException):
            conn.close()
            state["upstream"] = None
            raise
        if resp.will_close:
            conn.close()
            state["upstream"] = None
        out = [(k, v) for k, v in resp.getheaders() if k.lower() not in HOP and (method == "HEAD" or k.lower() != "content-length")]
        bump("forwarded")
        return resp.status, resp.reason, data, out

    def handle(raw):
        bump("connections")
        raw.settimeout(30)
        try:
            tls = ctx.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError) as e:
            bump("handshake_failures")
            bump("handshake_errors", str(e)[:300])
            raw.close()
            return
        bump("handshakes")
        bump("versions", tls.version())
        reader = tls.makefile("rb")
        state = {}
        drop_next = False
        while True:
            tls.settimeout(args.idle_close)
            try:
                line = reader.readline(65537)
            except (socket.timeout, TimeoutError):
                bump("idle_closes")
                return close(tls, reader, not args.no_close_notify)
            except (OSError, ssl.SSLError, ValueError):
                return close(tls, reader, False)
            if not line:
                return close(tls, reader, True)
            tls.settimeout(120)
            try:
                method, target, _version = line.decode("latin-1").rstrip("\r\n").split(" ", 2)
                headers = []
                while True:
                    h = reader.readline(65537).decode("latin-1").rstrip("\r\n")
                    if not h:
                        break
                    k, _, v = h.partition(":")
                    headers.append((k.strip(), v.strip()))
                length = int(next((v for k, v in headers if k.lower() == "content-length"), "0"))
                body = reader.read(length) if length else b""
            except (OSError, ssl.SSLError, ValueError):
                return close(tls, reader, False)
            bump("requests")
            target_header = next((v for k, v in headers if k.lower() == "x-amz-target"), None)
            if target_header:
                bump("amz_targets", target_header)
            if drop_next:
                return close(tls, reader, False)
            try:
                path, _, query = target.partition("?")
                q = dict(urllib.parse.parse_qsl(query))
                if path == "/__tls/bytes":
                    n = int(q.get("n", "0"))
                    data = pattern(n)
                    if q.get("chunked") == "1":
                        out = b""
                        at, size = 0, 1
                        while at < n:
                            piece = data[at:at + size]
                            out += b"%x\r\n" % len(piece) + piece + b"\r\n"
                            at += len(piece)
                            size = min(size * 7, 300000)
                        out += b"0\r\n\r\n"
                        tls.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + out)
                    else:
                        answer(tls, 200, "OK", data, head_only=method == "HEAD")
                elif path == "/__tls/eof":
                    data = pattern(int(q.get("n", "0")))
                    tls.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nConnection: close\r\n\r\n" + data)
                    return close(tls, reader, q.get("notify") == "1")
                elif path == "/__tls/stall":
                    tls.settimeout(60)
                    try:
                        reader.read(1)
                    except (OSError, ValueError):
                        pass
                    return close(tls, reader, False)
                elif path == "/__tls/drop-next":
                    answer(tls, 200, "OK", b"ok")
                    drop_next = True
                elif path == "/__tls/echo":
                    answer(tls, 200, "OK", body)
                elif up is not None:
                    status, reason, data, out = forward(state, method, target, headers, body)
                    answer(tls, status, reason, data, out, head_only=method == "HEAD")
                else:
                    answer(tls, 404, "Not Found", b"no upstream")
            except (OSError, ssl.SSLError, http.client.HTTPException):
                return close(tls, reader, False)

    while True:
        conn, _ = listener.accept()
        threading.Thread(target=handle, args=(conn,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
