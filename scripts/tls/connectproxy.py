#!/usr/bin/env python3
"""A loopback HTTP proxy for the proxy tests (AWSCoreTests/TLSTransportTests): CONNECT tunnels
(what https goes through) and absolute-form requests (`GET http://host:port/path HTTP/1.1`, what
plain http goes through), with optional Basic credentials. Standard library only.

  connectproxy.py [--auth USER:PASSWORD] [--map NAME=ADDRESS ...]

  --auth       require `Proxy-Authorization: Basic base64(USER:PASSWORD)`; anything else is
               answered 407 Proxy Authentication Required
  --map        connect to ADDRESS when a request names NAME (a name only the proxy knows: the
               client cannot have reached it without the proxy)

Prints its port on the first line, then serves until killed. `GET /__proxy/stats` (origin form,
sent to the proxy itself) returns JSON: the CONNECT targets, the absolute-form request lines, how
many requests were refused for credentials, and whether each accepted request carried credentials.
An absolute-form request is forwarded in origin form without the Proxy-* fields; after it the
connection is relayed as it is (enough for one request per connection, which the tests use).
"""
import argparse, base64, json, socket, sys, threading

lock = threading.Lock()
stats = {"connects": [], "forwards": [], "refused": 0, "with_credentials": []}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--auth")
    ap.add_argument("--map", action="append", default=[])
    args = ap.parse_args()
    expected = "Basic " + base64.b64encode(args.auth.encode()).decode() if args.auth else None
    names = dict(m.split("=", 1) for m in args.map)

    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    print(listener.getsockname()[1], flush=True)

    def pipe(src, dst):
        try:
            while True:
                b = src.recv(65536)
                if not b:
                    break
                dst.sendall(b)
        except OSError:
            pass
        try:
            dst.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def relay(a, b):
        t = threading.Thread(target=pipe, args=(b, a), daemon=True)
        t.start()
        pipe(a, b)
        t.join()
        a.close()
        b.close()

    def connect_upstream(conn, host, port):
        """A connection to host:port (through --map), or None after answering 502 and closing."""
        try:
            upstream = socket.create_connection((names.get(host, host), port), timeout=10)
        except OSError:
            conn.sendall(b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
            return None
        upstream.settimeout(None)
        conn.settimeout(None)
        return upstream

    def split_host_port(hp, default):
        if hp.startswith("["):
            host, _, rest = hp[1:].partition("]")
            return host, int(rest[1:]) if rest.startswith(":") else default
        host, _, port = hp.rpartition(":")
        return (host, int(port)) if host else (hp, default)

    def handle(conn):
        conn.settimeout(30)
        buf = b""
        while b"\r\n\r\n" not in buf:
            try:
                b = conn.recv(65536)
            except OSError:
                b = b""
            if not b:
                conn.close()
                return
            buf += b
        head, _, rest = buf.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = [(k.strip(), v.strip()) for k, _, v in (l.partition(":") for l in lines[1:])]
        if method == "GET" and target == "/__proxy/stats":
            with lock:
                data = json.dumps(stats).encode()
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % len(data) + data)
            conn.close()
            return
        auth = next((v for k, v in headers if k.lower() == "proxy-authorization"), None)
        if expected is not None and auth != expected:
            with lock:
                stats["refused"] += 1
            conn.sendall(b"HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm=\"test\"\r\n"
                         b"Content-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
            return
        with lock:
            stats["with_credentials"].append(auth is not None)
        if method == "CONNECT":
            host, port = split_host_port(target, 443)
            with lock:
                stats["connects"].append(target)
            upstream = connect_upstream(conn, host, port)
            if upstream is None:
                return
            conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            if rest:
                upstream.sendall(rest)
            return relay(conn, upstream)
        if not target.startswith("http://"):
            conn.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
            conn.close()
            return
        with lock:
            stats["forwards"].append(lines[0])
        hostport, slash, path = target[len("http://"):].partition("/")
        host, port = split_host_port(hostport, 80)
        upstream = connect_upstream(conn, host, port)
        if upstream is None:
            return
        kept = [l for l in lines[1:] if not l.lower().startswith(("proxy-authorization:", "proxy-connection:"))]
        upstream.sendall(("%s /%s %s\r\n" % (method, path, version) + "".join(l + "\r\n" for l in kept) + "\r\n").encode("latin-1") + rest)
        relay(conn, upstream)

    while True:
        c, _ = listener.accept()
        threading.Thread(target=handle, args=(c,), daemon=True).start()


if __name__ == "__main__":
    sys.exit(main())
