#!/usr/bin/env python3
"""A loopback HTTP proxy for the S3 store's fault tests (issue 16): forwards every request to an
upstream S3 endpoint (moto) unchanged -- method, path, headers including Host, body -- so SigV4
signatures made for the proxy's address still verify upstream, and injects faults:

  --slowdown N   answer the first N requests with 503 SlowDown (S3's throttling error)
  --skew         answer a request whose x-amz-date is more than 15 minutes off this machine's
                 clock with 403 RequestTimeTooSkewed and a Date header (as AWS does; moto ignores skew)
  --cut-body N   for the first N GET answers with a body over 1 MiB, send the full Content-Length
                 but only half of the body, then close the connection (a transfer dying midway)

Lost answers, armed at run time (the test knows its buckets only once the store exists):

  GET /__faultproxy/lose?method=M[&param=P][&path=S][&n=N][&retry=R][&hold=1]
                 the Nth (default 1st) request with method M whose query has parameter P (any
                 query when P is absent) and whose path contains S is forwarded upstream, then
                 its connection is closed without an answer: the request was applied, its answer
                 lost. Every later request with the same method, path and query (the client's
                 retry) is then, per R:
                   forward  forwarded as usual (default; moto answers a retried Complete 200)
                   412      412 PreconditionFailed, not forwarded
                   404      404 NoSuchUpload, not forwarded
                   500      500 InternalError, not forwarded
                   auto     412 when the retry carries If-None-Match: *, else 404 NoSuchUpload
                            (what a server that keeps no memory of the completed upload answers)
                   cut      its connection closed without an answer, not forwarded (a retry
                            that never gets through either: the client ends with no answer)
                 hold=1: the first retry waits until GET /__faultproxy/release (so a test can act
                 between the lost answer and the retry), then goes on per R.
  GET /__faultproxy/release   lets held retries go on

Failing requests, armed at run time:

  GET /__faultproxy/fail?method=M[&path=S][&count=N][&answer=A]
                 the next N (default: every one until lifted) requests with method M whose path
                 contains S are not forwarded but answered per A: 500 (default, 500
                 InternalError) or cut (the connection closed without an answer)
  GET /__faultproxy/unfail    lifts every fail rule

Prints its port on the first line of stdout, then serves until killed. GET /__faultproxy/stats
returns JSON counters (not a valid bucket name, so never forwarded): besides the ones above,
"forwarded_<METHOD>" (forwarded requests by method), "lost" (answers dropped), "held"
(retries waiting or released), "retried" (retries of a lost request seen), "answered"
(retries answered by the proxy itself) and "failed" (requests a fail rule answered or cut). Standard library only.
"""
import argparse, calendar, email.utils, http.client, http.server, json, socketserver, sys, threading, time, urllib.parse

lock = threading.Lock()
stats = {"forwarded": 0, "slowdown": 0, "skewed": 0, "cut": 0, "lost": 0, "held": 0, "retried": 0, "answered": 0, "failed": 0}
# Armed lost-answer rules: {method, param, path, n, seen, retry, hold}; and the requests whose
# answer was dropped: (method, full path) -> the rule.
rules = []
lost = {}
# Fail rules: {method, path, left (-1: until lifted), answer}.
fails = []
release = threading.Event()

RETRY_ANSWERS = {
    "412": (412, b"<Error><Code>PreconditionFailed</Code><Message>At least one of the pre-conditions you specified did not hold</Message>"
                 b"<Condition>If-None-Match</Condition></Error>"),
    "404": (404, b"<Error><Code>NoSuchUpload</Code><Message>The specified upload does not exist. The upload ID may be invalid, "
                 b"or the upload may have been aborted or completed.</Message></Error>"),
    "500": (500, b"<Error><Code>InternalError</Code><Message>We encountered an internal error. Please try again.</Message></Error>"),
}


def query_params(path):
    q = urllib.parse.urlsplit(path).query
    return urllib.parse.parse_qs(q, keep_blank_values=True)


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
            if self.path.startswith("/__faultproxy/lose"):
                q = {k: v[0] for k, v in query_params(self.path).items()}
                rule = {"method": q["method"], "param": q.get("param", ""), "path": q.get("path", ""), "n": int(q.get("n", "1")),
                        "seen": 0, "retry": q.get("retry", "forward"), "hold": q.get("hold") == "1"}
                if rule["retry"] not in ("forward", "auto", "cut") and rule["retry"] not in RETRY_ANSWERS:
                    return self.reply(400, b"<Error><Code>BadRule</Code></Error>")
                with lock:
                    rules.append(rule)
                return self.reply(200, b"<Armed/>")
            if self.path.startswith("/__faultproxy/release"):
                release.set()
                return self.reply(200, b"<Released/>")
            if self.path.startswith("/__faultproxy/fail"):
                q = {k: v[0] for k, v in query_params(self.path).items()}
                rule = {"method": q["method"], "path": q.get("path", ""), "left": int(q.get("count", "-1")),
                        "answer": q.get("answer", "500")}
                if rule["answer"] not in ("500", "cut"):
                    return self.reply(400, b"<Error><Code>BadRule</Code></Error>")
                with lock:
                    fails.append(rule)
                return self.reply(200, b"<Armed/>")
            if self.path.startswith("/__faultproxy/unfail"):
                with lock:
                    fails.clear()
                return self.reply(200, b"<Lifted/>")
            failing = None
            with lock:
                for rule in fails:
                    if rule["method"] == self.command and rule["path"] in urllib.parse.urlsplit(self.path).path and rule["left"] != 0:
                        if rule["left"] > 0:
                            rule["left"] -= 1
                        stats["failed"] += 1
                        failing = rule["answer"]
                        break
            if failing == "cut":
                self.close_connection = True
                return
            if failing is not None:
                status, text = RETRY_ANSWERS["500"]
                return self.reply(status, text)
            # A lost request's retry, or the request whose answer is to be lost.
            drop = False
            with lock:
                retry_of = lost.get((self.command, self.path))
                if retry_of is not None:
                    stats["retried"] += 1
                else:
                    for rule in rules:
                        if rule["method"] == self.command and (not rule["param"] or rule["param"] in query_params(self.path)) \
                                and rule["path"] in urllib.parse.urlsplit(self.path).path and rule["seen"] < rule["n"]:
                            rule["seen"] += 1
                            if rule["seen"] == rule["n"]:
                                drop = True
                                lost[(self.command, self.path)] = rule
                            break
            if retry_of is not None:
                if retry_of["hold"]:
                    with lock:
                        first = retry_of.get("held") is None
                        retry_of["held"] = True
                        if first:
                            stats["held"] += 1
                    if first:
                        release.wait(120)
                answer = retry_of["retry"]
                if answer == "auto":
                    answer = "412" if self.headers.get("If-None-Match") == "*" else "404"
                if answer == "cut":
                    with lock:
                        stats["answered"] += 1
                    self.close_connection = True
                    return
                if answer in RETRY_ANSWERS:
                    with lock:
                        stats["answered"] += 1
                    status, text = RETRY_ANSWERS[answer]
                    return self.reply(status, text)
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
                stats["forwarded_" + self.command] = stats.get("forwarded_" + self.command, 0) + 1
            if drop:
                # Applied upstream; the answer never reaches the client.
                with lock:
                    stats["lost"] += 1
                conn.close()
                self.close_connection = True
                return
            self.send_response(resp.status)
            for k, v in resp.getheaders():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            # A HEAD answer has no body but the object's Content-Length.
            length = resp.getheader("Content-Length") if self.command == "HEAD" else None
            self.send_header("Content-Length", length if length is not None else str(len(data)))
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
