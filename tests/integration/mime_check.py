#!/usr/bin/python3
"""Independent checks of templates/mime + templates/dkim output.

    mime_check.py MIME_GEN MIME_PARSE_PL

In a temp dir: generate RSA 1024/2048/4096 and Ed25519 keys with openssl,
run the C generator (tests/mime-gen.c) once per key and once dual-signed
(RSA-2048 + Ed25519), then for every message:
  - python3-dkim verifies every DKIM-Signature (dnsfunc serves the public
    keys derived here with openssl; no real DNS);
  - Python's email package (policy=default) parses it: decoded Subject,
    display names, addresses and both bodies equal the inputs (after the
    documented normalisation), and the MIME structure is as documented;
  - Perl MIME-tools (MIME::Parser, a second, independent reader) reads it
    the same way;
  - raw checks: CRLF only, no line > 998, no injected header.
Exit 0 when all pass; prints what failed otherwise.
"""
import base64
import email
import email.policy
import json
import os
import re
import subprocess
import sys
import tempfile

import dkim

FAILS = []


def fail(msg):
    FAILS.append(msg)
    print("FAIL:", msg)


def norm_header(s):
    """mime's header rule: controls -> space, whitespace runs -> one, trim."""
    out = re.sub(r"[\x00-\x20\x7f]+", " ", s)
    return out.strip(" ")


def norm_name(s):
    s = norm_header(s)
    b = s.encode()
    if len(b) > 512:  # display names are cut at 512 octets, on a char boundary
        n = 512
        while n > 0 and (b[n] & 0xC0) == 0x80:
            n -= 1
        s = b[:n].decode().rstrip(" ")
    return s


def norm_body(s):
    """mime's body rule: NUL dropped, CRLF/CR/LF -> one line break, and a
    non-empty body ends with a line break. Returned with \\n line ends."""
    if s is None:
        return ""
    s = s.replace("\0", "").replace("\r\n", "\n").replace("\r", "\n")
    if s and not s.endswith("\n"):
        s += "\n"
    return s


def openssl(*args, data=None):
    return subprocess.run(["openssl", *args], input=data, check=True,
                          capture_output=True).stdout


def make_keys(tmp):
    keys = {}
    specs = [("rsa1024", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:1024"]),
             ("rsa2048", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048"]),
             ("rsa4096", ["-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:4096"]),
             ("ed25519", ["-algorithm", "ED25519"])]
    for sel, args in specs:
        path = os.path.join(tmp, sel + ".pem")
        openssl("genpkey", *args, "-out", path)
        der = openssl("pkey", "-in", path, "-pubout", "-outform", "DER")
        if sel.startswith("rsa"):
            txt = b"v=DKIM1; k=rsa; p=" + base64.b64encode(der)
        else:  # RFC 8463: p= is the raw 32-octet key (end of the SPKI DER)
            txt = b"v=DKIM1; k=ed25519; p=" + base64.b64encode(der[-32:])
        keys[sel] = (path, txt)
    return keys


def check_raw(path, raw):
    if re.search(rb"\r(?!\n)|(?<!\r)\n", raw):
        fail(f"{path}: bare CR or LF")
    for n, line in enumerate(raw.split(b"\r\n")):
        if len(line) > 998:
            fail(f"{path}: line {n + 1} is {len(line)} octets")
    head = raw.split(b"\r\n\r\n", 1)[0]
    names = [l.split(b":", 1)[0].lower() for l in head.split(b"\r\n")
             if l and l[:1] not in (b" ", b"\t")]
    want = {b"dkim-signature", b"date", b"from", b"to", b"reply-to", b"subject",
            b"message-id", b"mime-version", b"list-unsubscribe",
            b"list-unsubscribe-post", b"feedback-id", b"x-campaign-id",
            b"content-type", b"content-transfer-encoding"}
    extra = set(names) - want
    if extra:
        fail(f"{path}: unexpected header fields {extra}")
    for n in want - {b"dkim-signature", b"content-transfer-encoding"}:
        if names.count(n) != 1:
            fail(f"{path}: {n!r} appears {names.count(n)} times")


def raw_phrase_words(raw, who):
    """Adjacent encoded words (only whitespace between) in From/To."""
    head = raw.split(b"\r\n\r\n", 1)[0].decode("ascii")
    m = re.search(r"(?im)^" + who + r":([^\r\n]*(?:\r\n[ \t][^\r\n]*)*)", head)
    v = m.group(1).replace("\r\n", "")
    return re.findall(r"\?=\s+=\?", v)


def check_python(case, raw):
    path = case["file"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    if msg.defects:
        fail(f"{path}: python defects {msg.defects}")
    got = str(msg["subject"])
    if got != norm_header(case["subject"]):
        fail(f"{path}: python subject {got[:80]!r} != {norm_header(case['subject'])[:80]!r}")
    for who in ("from", "to"):
        a = msg[who].addresses[0]
        want = norm_name(case[who + "_name"])
        got = a.display_name
        if raw_phrase_words(raw, who):
            # CPython keeps the whitespace between two encoded words of a
            # display name (RFC 2047 6.2 says drop it): compare without
            # whitespace there; Perl MIME-tools compares exactly.
            got, want = re.sub(r"\s", "", got), re.sub(r"\s", "", want)
        if got != want:
            fail(f"{path}: python {who} name {a.display_name[:60]!r} != "
                 f"{norm_name(case[who + '_name'])[:60]!r}")
        if a.addr_spec != case[who + "_addr"]:
            fail(f"{path}: python {who} addr {a.addr_spec!r}")
    bodies = {}
    for part in msg.walk():
        if part.is_multipart():
            continue
        bodies[part.get_content_type()] = part.get_content().replace("\r\n", "\n")
        if part.defects:
            fail(f"{path}: part defects {part.defects}")
    text, html = norm_body(case["text"]), norm_body(case["html"])
    if text and html:
        if msg.get_content_type() != "multipart/alternative":
            fail(f"{path}: expected multipart/alternative")
        types = [p.get_content_type() for p in msg.iter_parts()]
        if types != ["text/plain", "text/html"]:
            fail(f"{path}: part order {types}")
    expect = {}
    if html:
        expect["text/html"] = html
    if text or not html:
        expect["text/plain"] = text
    if bodies != expect:
        for k in set(bodies) | set(expect):
            if bodies.get(k) != expect.get(k):
                fail(f"{path}: python {k} body {str(bodies.get(k))[:80]!r} != "
                     f"{str(expect.get(k))[:80]!r}")


def check_perl(case, r):
    path = case["file"]
    if r["subject"] != norm_header(case["subject"]):
        fail(f"{path}: perl subject {r['subject'][:80]!r}")
    for who in ("from", "to"):
        if r[who + "_name"] != norm_name(case[who + "_name"]):
            fail(f"{path}: perl {who} name {r[who + '_name'][:60]!r}")
        if r[who + "_addr"] != case[who + "_addr"]:
            fail(f"{path}: perl {who} addr {r[who + '_addr']!r}")
    text, html = norm_body(case["text"]), norm_body(case["html"])
    if html and (r.get("html") or "").replace("\r\n", "\n") != html:
        fail(f"{path}: perl html body {(r.get('html') or '')[:80]!r}")
    if (text or not html) and (r.get("text") or "").replace("\r\n", "\n") != text:
        fail(f"{path}: perl text body {(r.get('text') or '')[:80]!r}")


def main():
    gen, perl_script = sys.argv[1], sys.argv[2]
    with tempfile.TemporaryDirectory(prefix="mime-check-") as tmp:
        keys = make_keys(tmp)
        dns = {f"{sel}._domainkey.loja.example.".encode(): txt
               for sel, (_, txt) in keys.items()}

        def dnsfunc(name, timeout=5):
            return dns.get(name)

        runs = [[sel] for sel in keys] + [["rsa2048", "ed25519"]]
        for sels in runs:
            out = os.path.join(tmp, "+".join(sels))
            os.mkdir(out)
            subprocess.run([gen, out] + [f"{s}={keys[s][0]}" for s in sels],
                           check=True, stdout=subprocess.DEVNULL)
            manifest = json.load(open(os.path.join(out, "manifest.json")))
            for case in manifest:
                raw = open(case["file"], "rb").read()
                d = dkim.DKIM(raw, minkey=1024)
                nsig = len([h for h in d.headers if h[0].lower() == b"dkim-signature"])
                if nsig != len(sels):
                    fail(f"{case['file']}: {nsig} signatures, want {len(sels)}")
                for i in range(nsig):
                    if not d.verify(idx=i, dnsfunc=dnsfunc):
                        fail(f"{case['file']}: DKIM signature {i} ({'+'.join(sels)}) "
                             "does not verify")
            if sels == ["rsa2048", "ed25519"]:
                perl = subprocess.run(["perl", perl_script] +
                                      [c["file"] for c in manifest],
                                      check=True, capture_output=True).stdout
                perl_by_file = {}
                for line in perl.decode().splitlines():
                    r = json.loads(line)
                    perl_by_file[r["file"]] = r
                for case in manifest:
                    raw = open(case["file"], "rb").read()
                    check_raw(case["file"], raw)
                    check_python(case, raw)
                    check_perl(case, perl_by_file[case["file"]])
            print(f"{'+'.join(sels)}: {len(manifest)} messages checked")
    if FAILS:
        print(f"{len(FAILS)} failures")
        return 1
    print("all good")
    return 0


if __name__ == "__main__":
    sys.exit(main())
