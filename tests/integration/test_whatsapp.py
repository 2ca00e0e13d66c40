#!/usr/bin/python3
"""engine/whatsapp against bench/wa-double on loopback (127.50.0.0/16).

    test_whatsapp.py WA_DRIVE WA_DOUBLE

Each scenario starts its own double on its own address, runs tests/wa-drive
(the client on a libev loop) and checks the results it prints and what the
double recorded. Processes are ended by PID in World.close().
"""
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import World, wait_until  # noqa: E402

DRIVE, DOUBLE = os.path.abspath(sys.argv[1]), os.path.abspath(sys.argv[2])
TOKEN = "EAAGtestSECRETtoken42"
PHONE_ID = "1061234567"
OK, OK2 = "5511999990001", "5521988887777"
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def make_certs(world, ip):
    """A private CA and a server certificate for `ip`; returns (ca, cert, key)."""
    d = world.path
    run = lambda *a: subprocess.run(a, check=True, capture_output=True, timeout=60)
    run("openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
        "-subj", "/CN=carteiro test CA", "-keyout", d("ca.key"), "-out", d("ca.pem"))
    run("openssl", "req", "-newkey", "rsa:2048", "-nodes", "-subj", f"/CN={ip}",
        "-keyout", d("srv.key"), "-out", d("srv.csr"))
    with open(d("ext.cnf"), "w") as f:
        f.write(f"subjectAltName=IP:{ip}\n")
    run("openssl", "x509", "-req", "-in", d("srv.csr"), "-CA", d("ca.pem"),
        "-CAkey", d("ca.key"), "-CAcreateserial", "-days", "2",
        "-extfile", d("ext.cnf"), "-out", d("srv.pem"))
    return d("ca.pem"), d("srv.pem"), d("srv.key")


def scenario(world, n, addr, double_args, drive_args, to=(OK,), expect_rc=0,
             scheme="http"):
    tag = addr.replace(".", "_")
    ready, record = world.path(f"ready-{tag}"), world.path(f"record-{tag}.jsonl")
    world.start([DOUBLE, "--listen", f"{addr}:18080", "--token", TOKEN,
                 "--phone-number-id", PHONE_ID, "--record", record,
                 "--ready-file", ready] + double_args, f"double-{tag}")
    wait_until(f"wa-double on {addr}", lambda: os.path.exists(ready))
    url = f"{scheme}://{addr}:18080/v21.0"
    t0 = time.monotonic()
    p = subprocess.run([DRIVE] + drive_args + [url, TOKEN, PHONE_ID, str(n)] + list(to),
                       capture_output=True, text=True, timeout=150)
    secs = time.monotonic() - t0
    check(p.returncode == expect_rc, f"{addr}: wa-drive exit {p.returncode}: {p.stderr}")
    check(TOKEN not in p.stdout and TOKEN not in p.stderr, f"{addr}: token in output")
    lines = [json.loads(x) for x in p.stdout.splitlines() if x.strip()]
    results = [x for x in lines if "kind" in x]
    stats = next((x["stats"] for x in lines if "stats" in x), {})
    rec = []
    if os.path.exists(record):
        with open(record) as f:
            rec = [json.loads(x) for x in f if x.strip()]
    return results, stats, rec, secs


def main():
    w = World("whatsapp")
    try:
        # 1. success: ids stored, params arrive intact
        res, st, rec, _ = scenario(w, 3, "127.50.0.1", [], [], to=(OK, OK2))
        check(len(res) == 3 and all(r["kind"] == "sent" for r in res), f"success: {res}")
        check(all(r["message_id"].startswith("wamid.") for r in res), "success: message_id")
        check(sorted({r["wa_id"] for r in res}) == sorted({OK, OK2}), "success: wa_id")
        check(len(rec) == 3 and rec[0]["params"] == ['Cliente "0"\n<São Paulo>'],
              f"success: params as recorded: {rec[:1]}")
        check(all(r["template"] == "carrinho_abandonado" and r["language"] == "pt_BR"
                  for r in rec), "success: template/language")
        check({r["id"] for r in rec} == {r["message_id"] for r in res}, "success: ids match")

        # 2. 429/130429 with Retry-After → retry with that delay
        res, st, rec, _ = scenario(w, 10, "127.50.0.2",
                                   ["--rate-limit", "3", "--retry-after", "3"], ["-c", "4"])
        lim = [r for r in res if r["kind"] == "retry"]
        check(len(lim) >= 1 and all(r["http"] == 429 and r["code"] == 130429 and
                                    r["retry_after_ms"] == 3000 for r in lim),
              f"429: {res}")
        check(sum(r["kind"] == "sent" for r in res) >= 3, "429: the first ones sent")

        # 3. 131026 → failed
        res, *_ = scenario(w, 2, "127.50.0.3", ["--fail", f"{OK2}=131026"], [],
                           to=(OK, OK2))
        by_kind = {r["kind"]: r for r in res}
        check("failed" in by_kind and by_kind["failed"]["code"] == 131026 and
              by_kind["failed"]["http"] == 400, f"131026: {res}")
        check("sent" in by_kind, "131026: the other contact sent")

        # 4. 190 → channel paused, later sends never reach the API
        res, st, rec, _ = scenario(w, 20, "127.50.0.4", ["--token-expired"], ["-c", "2"])
        check(len(res) == 20 and all(r["kind"] == "channel_paused" for r in res),
              f"190: {res[:3]}")
        check(len(rec) <= 2, f"190: {len(rec)} requests reached the API after the pause")

        # 4b. a server that quotes the token back: masked in results and logs
        res, *_ = scenario(w, 1, "127.50.0.15", ["--token-expired", "--echo-token"], [])
        check(len(res) == 1 and res[0]["kind"] == "channel_paused" and
              "Bearer ***" in res[0]["message"], f"echo token: {res}")

        # 5. 500 → retry with the default delay
        res, *_ = scenario(w, 2, "127.50.0.5", ["--status", "500"], [])
        check(all(r["kind"] == "retry" and r["http"] == 500 and
                  r["retry_after_ms"] == 5000 for r in res), f"500: {res}")

        # 6. 131049 → retry late (24 h)
        res, *_ = scenario(w, 1, "127.50.0.6", ["--ecosystem", OK], [])
        check(len(res) == 1 and res[0]["kind"] == "retry_late" and
              res[0]["retry_after_ms"] == 86400000, f"131049: {res}")

        # 7. connection reuse: 100 sends on at most 4 connections
        res, st, rec, _ = scenario(w, 100, "127.50.0.7", [], ["-c", "4", "-q"])
        check(st.get("sent") == 100, f"reuse: {st}")
        conns = {r["conn"] for r in rec}
        check(st.get("connects", 99) <= 4 and len(conns) <= 4,
              f"reuse: {st.get('connects')} connects, {len(conns)} client ports")

        # 8. cancel: the cancelled send never calls back, never reaches the API
        res, st, rec, _ = scenario(w, 5, "127.50.0.8", [], ["-x", "3"])
        check(len(res) == 4 and 3 not in {r["id"] for r in res}, f"cancel: {res}")
        check(len(rec) == 4 and st.get("cancelled_called") == 0, "cancel: 4 requests")

        # 9. the client's rate limit: 100 sends at 50/s take about 2 s
        res, st, rec, secs = scenario(w, 100, "127.50.0.9", [], ["-r", "50", "-q"])
        check(st.get("sent") == 100, f"rate: {st}")
        rate = st.get("rate", 0)
        # never faster than the limit (exact pacing is unit-tested on a fake clock)
        check(0 < rate <= 60, f"rate: achieved {rate}/s for 50/s")
        ts = sorted(r["ts"] for r in rec)
        check(len(ts) == 100 and ts[-1] - ts[0] >= 1.6, "rate: spread at the double")

        # 10. timeout → retry, no HTTP status
        res, *_ = scenario(w, 1, "127.50.0.10", ["--delay", "3000"], ["-t", "400"])
        check(len(res) == 1 and res[0]["kind"] == "retry" and res[0]["http"] == 0 and
              "imeout" in res[0]["message"], f"timeout: {res}")

        # 11. connection refused → retry
        p = subprocess.run([DRIVE, "http://127.50.0.11:18081/v21.0", TOKEN, PHONE_ID,
                            "1", OK], capture_output=True, text=True, timeout=60)
        res = [json.loads(x) for x in p.stdout.splitlines() if '"kind"' in x]
        check(len(res) == 1 and res[0]["kind"] == "retry" and res[0]["http"] == 0,
              f"refused: {res}")

        # 12. plain http off loopback is refused, without showing the token
        p = subprocess.run([DRIVE, "http://198.51.100.7/v21.0", TOKEN, PHONE_ID, "1", OK],
                           capture_output=True, text=True, timeout=60)
        check(p.returncode == 1 and "loopback" in p.stderr and TOKEN not in p.stderr,
              f"http rule: {p.returncode} {p.stderr}")

        # 13. HTTPS with a private CA (ca_file): verified, connections reused
        ca, cert, key = make_certs(w, "127.50.0.13")
        tls = ["--tls-cert", cert, "--tls-key", key]
        res, st, rec, _ = scenario(w, 20, "127.50.0.13", tls, ["-C", ca, "-c", "2", "-q"],
                                   scheme="https")
        check(st.get("sent") == 20 and st.get("connects", 99) <= 2, f"https: {st}")

        # 14. HTTPS without that CA: verification fails, nothing is sent
        res, st, rec, _ = scenario(w, 1, "127.50.0.14", tls, [], scheme="https")
        check(len(res) == 1 and res[0]["kind"] == "retry" and res[0]["http"] == 0 and
              len(rec) == 0, f"https unverified: {res}")
    finally:
        w.close()
    if failures:
        print(f"{len(failures)} failure(s)")
        sys.exit(1)
    print("ok")


if __name__ == "__main__":
    main()
