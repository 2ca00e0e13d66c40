#!/usr/bin/python3
"""Starts dnsmasq on loopback with MX records (three equal preferences and
one lower), runs dns_drive against it, tears it down.

usage: test_dns.py DNS_DRIVE
"""
import os
import subprocess
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "lib"))
from carteiro_test import World, start_dnsmasq  # noqa: E402

DRIVE = os.path.abspath(sys.argv[1])
ADDR, PORT = "127.10.10.53", 5355


def main():
    w = World("dns")
    try:
        lines = ["local=/dns.test/", "local-ttl=30"]
        for h, ip in (("mxa", 1), ("mxb", 2), ("mxc", 3), ("mxd", 4)):
            lines.append(f"host-record={h}.dns.test,127.10.10.{ip}")
        for h in ("mxa", "mxb", "mxc"):
            lines.append(f"mx-host=equal.dns.test,{h}.dns.test,10")
        lines.append("mx-host=equal.dns.test,mxd.dns.test,20")
        # A second domain on two of the same MX hosts (shared hosting).
        for h in ("mxa", "mxb"):
            lines.append(f"mx-host=shared.dns.test,{h}.dns.test,10")
        start_dnsmasq(w, ADDR, PORT, lines, "equal.dns.test")
        r = subprocess.run([DRIVE, f"{ADDR}:{PORT}"], timeout=120)
        rc = r.returncode
    finally:
        w.close()
    sys.exit(rc)


main()
