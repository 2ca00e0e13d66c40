#!/usr/bin/python3
"""Integration test of carteiro-gen and bench/dns-world (dnsmasq on 127.20.2.53).

usage: test_gen_dns.py PATH/carteiro-gen PATH/dns-world
"""
import collections
import csv
import json
import os
import subprocess
import sys
import tempfile

GEN, WORLD = sys.argv[1], sys.argv[2]
LISTEN, PORT = "127.20.2.53", 5399
FAILS = []


def check(cond, what):
    if not cond:
        FAILS.append(what)
        print("FAIL:", what, flush=True)


def gen(*args):
    return subprocess.run([GEN] + list(args), check=True, stdout=subprocess.PIPE).stdout


def main():
    with tempfile.TemporaryDirectory(prefix="gendns.") as tmp:
        a = os.path.join(tmp, "a.csv")
        b = os.path.join(tmp, "b.csv")
        gen("--contacts", "20000", "--domains", "1000", "--phones", "--cart", "--seed", "5", "--out", a)
        gen("--contacts", "20000", "--domains", "1000", "--phones", "--cart", "--seed", "5", "--out", b)
        check(open(a, "rb").read() == open(b, "rb").read(), "same seed, same bytes")
        rows = list(csv.DictReader(open(a, encoding="utf-8")))
        check(len(rows) == 20000, "row count")
        check(list(rows[0].keys()) == ["email", "first_name", "last_name", "city", "phone",
                                       "cart_items", "cart_total"], "header %r" % list(rows[0]))
        emails = [r["email"] for r in rows]
        check(len(set(emails)) == len(emails), "unique addresses")
        check(all(r["phone"].startswith("+55") and len(r["phone"]) == 14 for r in rows), "E.164 phones")
        doms = collections.Counter(e.split("@")[1] for e in emails)
        share = doms["gmail.test"] / len(emails)
        check(0.42 < share < 0.48, "gmail share %.3f" % share)
        check(any(any(ch in r["first_name"] + r["last_name"] for ch in "ãçéêíóôú") for r in rows),
              "accented names")
        nd = gen("--contacts", "50", "--domains", "1000", "--format", "ndjson", "--cart")
        for line in nd.decode().splitlines():
            o = json.loads(line)
            check(1 <= len(o["cart"]) <= 5 and {"name", "price", "qty"} <= set(o["cart"][0]),
                  "cart items")
        listing = os.path.join(tmp, "domains")
        with open(listing, "wb") as f:
            f.write(gen("--domains", "1000", "--list-domains"))
        listed = [l.split()[0] for l in open(listing)]
        check(len(listed) == 1000 and set(doms) <= set(listed), "listed domains cover contacts")
        wdir = os.path.join(tmp, "dns")
        out = subprocess.run([WORLD, "start", "--domains", listing, "--sinks",
                              "127.20.2.1,127.20.2.2", "--listen", LISTEN, "--port", str(PORT),
                              "--dir", wdir], check=True, stdout=subprocess.PIPE).stdout
        pid = int(out.split()[0])
        try:
            def q(name, t="MX"):
                r = subprocess.run([WORLD, "query", "--listen", LISTEN, "--port", str(PORT),
                                    "--type", t, name], check=True, stdout=subprocess.PIPE)
                return r.stdout.decode().strip()
            check(q("gmail.test") == "(0, 3)", "big provider has 3 MX")
            check(q("d0993.test") == "(0, 2)", "tail domain has 2 MX")
            world = json.load(open(os.path.join(wdir, "world.json")))
            host = world["d0993.test"][0][1]
            check(q(host, "A") == "(0, 1)", "MX host has an A record")
            tails = {tuple(h for _, h, _ in v) for d, v in world.items() if d.startswith("d")}
            check(len(tails) == 4, "tail rolls up into 4 hosting providers")
        finally:
            subprocess.run([WORLD, "stop", "--dir", wdir], check=True)
        check(not os.path.exists("/proc/%d" % pid) or
              open("/proc/%d/stat" % pid).read().split()[2] == "Z", "dnsmasq stopped")
    if FAILS:
        print("%d failure(s)" % len(FAILS))
        sys.exit(1)
    print("all gen/dns checks passed")


if __name__ == "__main__":
    main()
