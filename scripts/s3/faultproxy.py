#!/usr/bin/env python3
"""A loopback HTTP proxy for the S3 store's fault tests (issue 16): forwards every request to an
upstream S3 endpoint (moto) unchanged -- method, path, headers including Host, body -- so SigV4
signatures made for the proxy's address still verify upstream, and injects faults:

  --slowdown N   answer the first N requests with 503 SlowDown (S3's throttling error)
  --skew         answer a request whose x-amz-date is more than 15 minutes off this machine's
                 clock with 403 RequestTimeTooSkewed and a Date header (as AWS does; moto ignores skew)
  --cut-body N   for the first N GET answers with a body over 1 MiB, send the full Content-Length
                 but only half of the body, then close the connection (a transfer dying midway)

Prints its port on the first line of stdout, then serves until killed. GET /__faultproxy/stats
returns JSON counters (not a valid bucket name, so never forwarded). Standard library only.
"""
import argparse, calendar, email.utils, http.client, http.server, json, socketserver, sys, threading, time, urllib.parse

lock = threading.Lock()
stats = {"forwarded": 0, "slowdown": 0, "skewed": 0, "cut": 0}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("upstream")
    ap.add_argument("--slowdown", type=int, default=0)
    ap.add_argument("--skew", action="store_true")
    ap.add_argument("--cut-body", type=int, default=0)
    args = ap.parse_args()
    up = urllib.parse.urlparse(args.upstream)
    budget = {"slowdown": args.slowdown, "cut": args.cut_body}

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *a):
            pass

        def reply(self, status, body, extra=()):
            # send_response_only: no second Date header of the server's own.
            self.send_response_only(status)
            if not any(k == "Date" for k, _ in extra):
                self.send_header("Date", email.utils.formatdate(usegmt=True))
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(body)))
            for k, v in extra:
                self.send_header(k, v)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def handle_any(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            if self.path.startswith("/__faultproxy/stats"):
                with lock:
                    data = json.dumps(stats).encode()
                return self.reply(200, data)
            with lock:
                if budget["slowdown"] > 0:
                    budget["slowdown"] -= 1
                    stats["slowdown"] += 1
                    inject = "slowdown"
                else:
                    inject = None
            if inject == "slowdown":
                return self.reply(503, b"<Error><Code>SlowDown</Code><Message>Please reduce your request rate.</Message></Error>")
            if args.skew:
                stamp = self.headers.get("x-amz-date", "")
                try:
                    t = calendar.timegm(time.strptime(stamp, "%Y%m%dT%H%M%SZ"))
                except ValueError:
                    t = time.time()
                if abs(t - time.time()) > 900:
                    with lock:
                        stats["skewed"] += 1
                    return self.reply(403, b"<Error><Code>RequestTimeTooSkewed</Code><Message>The difference between the request time "
                                      b"and the current time is too large.</Message></Error>",
                                      [("Date", email.utils.formatdate(usegmt=True))])
            conn = http.client.HTTPConnection(up.hostname, up.port or 80, timeout=300)
            headers = {k: v for k, v in self.headers.items()}
            conn.request(self.command, self.path, body=body, headers=headers)
            resp = conn.getresponse()
            data = resp.read()
            with lock:
                stats["forwarded"] += 1
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            cut = False
            if self.command == "GET" and len(data) > (1 << 20):
                with lock:
                    if budget["cut"] > 0:
                        budget["cut"] -= 1
                        stats["cut"] += 1
                        cut = True
            if cut:
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
            elif self.command != "HEAD":
                self.wfile.write(data)
            conn.close()

        do_GET = do_PUT = do_POST = do_DELETE = do_HEAD = handle_any

    class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
        daemon_threads = True

    srv = Server(("127.0.0.1", 0), Handler)
    print(srv.server_address[1], flush=True)
    srv.serve_forever()


if __name__ == "__main__":
    main()
