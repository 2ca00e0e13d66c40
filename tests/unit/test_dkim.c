/* Unit tests for templates/dkim: canonicalization vectors, key loading
 * errors, header shape, dual signing, determinism across threads.
 * (Signatures are verified independently by tests/integration/mime_check.py
 * with python3-dkim.) Keys are generated here, in a temp dir. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <pthread.h>
#include <unistd.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rsa.h>

#include "templates/dkim.h"

static char dir[] = "/tmp/test-dkim-XXXXXX";
static char rsa_path[256], ed_path[256], ec_path[256], small_path[256],
    junk_path[256];

static void
write_key(const char *path, EVP_PKEY *k)
{
	FILE *fp = fopen(path, "w");
	assert_non_null(fp);
	assert_int_equal(PEM_write_PrivateKey(fp, k, NULL, NULL, 0, NULL, NULL), 1);
	fclose(fp);
	EVP_PKEY_free(k);
}

static int
setup(void **state)
{
	(void)state;
	if (mkdtemp(dir) == NULL)
		return -1;
	snprintf(rsa_path, sizeof rsa_path, "%s/rsa.pem", dir);
	snprintf(ed_path, sizeof ed_path, "%s/ed.pem", dir);
	snprintf(ec_path, sizeof ec_path, "%s/ec.pem", dir);
	snprintf(small_path, sizeof small_path, "%s/small.pem", dir);
	snprintf(junk_path, sizeof junk_path, "%s/junk.pem", dir);
	write_key(rsa_path, EVP_RSA_gen(2048));
	write_key(ed_path, EVP_PKEY_Q_keygen(NULL, NULL, "ED25519"));
	write_key(ec_path, EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256"));
	write_key(small_path, EVP_RSA_gen(768));
	FILE *fp = fopen(junk_path, "w");
	fputs("hello, not a key\n", fp);
	fclose(fp);
	return 0;
}

static int
teardown(void **state)
{
	(void)state;
	unlink(rsa_path);
	unlink(ed_path);
	unlink(ec_path);
	unlink(small_path);
	unlink(junk_path);
	rmdir(dir);
	return 0;
}

struct canon_case {
	const char *in;
	const char *out;
};

static void
test_canon_body(void **state)
{
	(void)state;
	const struct canon_case cases[] = {
		/* RFC 6376 3.4.6 example */
		{ " C \r\nD \t E\r\n\r\n\r\n", " C\r\nD E\r\n" },
		{ "", "" },
		{ "\r\n", "" },
		{ "\r\n\r\n\r\n", "" },
		{ "abc", "abc\r\n" },
		{ "a  \t b\t\r\n", "a b\r\n" },
		{ "\r\n\r\nx\r\n\r\n", "\r\n\r\nx\r\n" },
		{ ".\r\n", ".\r\n" },
		{ "  \r\nx\r\n", "\r\nx\r\n" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		buf_t b = BUF_INIT;
		dkim_canon_body(cases[i].in, strlen(cases[i].in), &b);
		buf_cstr(&b);
		if (strcmp(b.p, cases[i].out) != 0)
			fail_msg("case %zu: got [%s]", i, b.p);
		buf_free(&b);
	}
}

static void
test_canon_header(void **state)
{
	(void)state;
	const struct canon_case cases[] = {
		/* RFC 6376 3.4.6 example */
		{ "A: X\r\n", "a:X\r\n" },
		{ "B : Y\t\r\n\tZ  \r\n", "b:Y Z\r\n" },
		{ "Subject:   lots \t of   space  \r\n", "subject:lots of space\r\n" },
		{ "FROM:x\r\n", "from:x\r\n" },
		{ "X-Empty:\r\n", "x-empty:\r\n" },
		{ "To: a\r\n b\r\n\tc\r\n", "to:a b c\r\n" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		buf_t b = BUF_INIT;
		dkim_canon_header(cases[i].in, strlen(cases[i].in), &b);
		buf_cstr(&b);
		if (strcmp(b.p, cases[i].out) != 0)
			fail_msg("case %zu: got [%s]", i, b.p);
		buf_free(&b);
	}
}

struct load_case {
	const char *domain, *selector, *path, *expect;
};

static void
test_load_errors(void **state)
{
	(void)state;
	const struct load_case cases[] = {
		{ "loja.example", "s1", "/nonexistent/key.pem", "No such file" },
		{ "loja.example", "s1", junk_path, "not a PEM private key" },
		{ "loja.example", "s1", ec_path, "RSA or Ed25519" },
		{ "loja.example", "s1", small_path, "768 bits" },
		{ "bad domain", "s1", rsa_path, "domain" },
		{ "loja.example", "s;1", rsa_path, "selector" },
		{ "loja.example", "s1", NULL, "no key file" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char err[256] = "";
		dkim_signer *s = dkim_signer_new(cases[i].domain,
		    cases[i].selector, cases[i].path, err, sizeof err);
		assert_null(s);
		if (strstr(err, cases[i].expect) == NULL)
			fail_msg("case %zu: error [%s] lacks [%s]", i, err,
			    cases[i].expect);
		/* the file is named when there is one */
		if (cases[i].path && strcmp(cases[i].expect, "domain") &&
		    strcmp(cases[i].expect, "selector"))
			assert_non_null(strstr(err, cases[i].path));
	}
}

static const char msg[] =
    "From: Loja <news@loja.example>\r\n"
    "To: maria@example.com\r\n"
    "Subject: =?utf-8?q?A=C3=A7=C3=A3o?=\r\n"
    "Date: Tue, 14 Nov 2023 22:13:20 +0000\r\n"
    "Message-ID: <1@loja.example>\r\n"
    "MIME-Version: 1.0\r\n"
    "X-Not-Signed: 1\r\n"
    "Content-Type: text/plain; charset=utf-8\r\n"
    "\r\n"
    "Hello  \r\n.\r\n\r\n";

static void
sign(dkim_signer *const *s, size_t n, buf_t *out)
{
	char err[256] = "";
	if (dkim_sign(s, n, msg, sizeof msg - 1, 1700000000, out, err, sizeof err))
		fail_msg("dkim_sign: %s", err);
}

static void
test_dual_sign_shape(void **state)
{
	(void)state;
	char err[256];
	dkim_signer *s[2];
	s[0] = dkim_signer_new("loja.example", "rsa", rsa_path, err, sizeof err);
	s[1] = dkim_signer_new("loja.example", "ed", ed_path, err, sizeof err);
	assert_non_null(s[0]);
	assert_non_null(s[1]);
	assert_string_equal(dkim_signer_algorithm(s[0]), "rsa-sha256");
	assert_string_equal(dkim_signer_algorithm(s[1]), "ed25519-sha256");
	buf_t b = BUF_INIT;
	sign(s, 2, &b);
	buf_cstr(&b);
	/* two headers, CRLF-folded, lines <= 78 */
	int nsig = 0;
	for (const char *p = b.p; (p = strstr(p, "DKIM-Signature:")) != NULL; p++)
		nsig++;
	assert_int_equal(nsig, 2);
	size_t line = 0;
	for (size_t i = 0; i < b.len; i++) {
		if (b.p[i] == '\r') {
			assert_int_equal(b.p[i + 1], '\n');
			assert_true(line <= 78);
			line = 0;
			i++;
		} else {
			assert_int_not_equal(b.p[i], '\n');
			line++;
		}
	}
	assert_int_equal(line, 0);
	/* unfold and look at tags */
	buf_t u = BUF_INIT;
	for (size_t i = 0; i < b.len; i++) /* unfold, drop all whitespace */
		if (b.p[i] != '\r' && b.p[i] != '\n' && b.p[i] != ' ')
			buf_addc(&u, b.p[i]);
	buf_cstr(&u);
	assert_non_null(strstr(u.p, "a=rsa-sha256;"));
	assert_non_null(strstr(u.p, "a=ed25519-sha256;"));
	assert_non_null(strstr(u.p, "c=relaxed/relaxed;"));
	assert_non_null(strstr(u.p, "d=loja.example;"));
	assert_non_null(strstr(u.p, "t=1700000000;"));
	assert_non_null(strstr(u.p, "h=from:to:subject:date:message-id:"
	    "mime-version:content-type:from:to:subject;"));
	assert_null(strstr(u.p, "x-not-signed"));
	/* the same body hash in both */
	const char *bh1 = strstr(u.p, "bh="), *bh2 = strstr(bh1 + 3, "bh=");
	assert_non_null(bh2);
	assert_memory_equal(bh1, bh2, 48);
	buf_free(&u);
	buf_free(&b);
	dkim_signer_free(s[0]);
	dkim_signer_free(s[1]);
}

static void
test_dns_record(void **state)
{
	(void)state;
	char err[256];
	dkim_signer *s = dkim_signer_new("loja.example", "ed", ed_path, err, sizeof err);
	buf_t b = BUF_INIT;
	assert_int_equal(dkim_signer_dns_record(s, &b), 0);
	assert_true(strncmp(b.p, "v=DKIM1; k=ed25519; p=", 22) == 0);
	assert_int_equal(b.len, 22 + 44);
	dkim_signer_free(s);
	s = dkim_signer_new("loja.example", "rsa", rsa_path, err, sizeof err);
	buf_reset(&b);
	assert_int_equal(dkim_signer_dns_record(s, &b), 0);
	assert_true(strncmp(b.p, "v=DKIM1; k=rsa; p=MIIB", 22) == 0);
	dkim_signer_free(s);
	buf_free(&b);
}

static void
test_bad_message(void **state)
{
	(void)state;
	char err[256] = "";
	dkim_signer *s = dkim_signer_new("loja.example", "ed", ed_path, err, sizeof err);
	const char *bad[] = {
		"From: a@b\r\nno blank line\r\n",
		" continuation first\r\n\r\nbody",
		"NoColon\r\n\r\nbody",
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		buf_t b = BUF_INIT;
		buf_adds(&b, "keep");
		err[0] = '\0';
		assert_int_equal(dkim_sign(&s, 1, bad[i], strlen(bad[i]), 1, &b,
		    err, sizeof err), -1);
		assert_true(strlen(err) > 0);
		assert_int_equal(b.len, 4);
		buf_free(&b);
	}
	dkim_signer_free(s);
}

/* RSA PKCS#1 v1.5 and Ed25519 are deterministic: threads sharing the
 * signers must all produce the single-threaded result. */
struct thr {
	dkim_signer **s;
	const char *want;
	int bad;
};

static void *
thr_main(void *arg)
{
	struct thr *t = arg;
	for (int i = 0; i < 20; i++) {
		buf_t b = BUF_INIT;
		char err[256];
		if (dkim_sign(t->s, 2, msg, sizeof msg - 1, 1700000000, &b, err,
		    sizeof err) != 0 || strcmp(buf_cstr(&b), t->want) != 0)
			t->bad++;
		buf_free(&b);
	}
	return NULL;
}

static void
test_threads(void **state)
{
	(void)state;
	char err[256];
	dkim_signer *s[2];
	s[0] = dkim_signer_new("loja.example", "rsa", rsa_path, err, sizeof err);
	s[1] = dkim_signer_new("loja.example", "ed", ed_path, err, sizeof err);
	buf_t want = BUF_INIT;
	sign(s, 2, &want);
	struct thr t[4];
	pthread_t th[4];
	for (int i = 0; i < 4; i++) {
		t[i] = (struct thr){ s, buf_cstr(&want), 0 };
		assert_int_equal(pthread_create(&th[i], NULL, thr_main, &t[i]), 0);
	}
	for (int i = 0; i < 4; i++) {
		pthread_join(th[i], NULL);
		assert_int_equal(t[i].bad, 0);
	}
	buf_free(&want);
	dkim_signer_free(s[0]);
	dkim_signer_free(s[1]);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_canon_body),
		cmocka_unit_test(test_canon_header),
		cmocka_unit_test(test_load_errors),
		cmocka_unit_test(test_dual_sign_shape),
		cmocka_unit_test(test_dns_record),
		cmocka_unit_test(test_bad_message),
		cmocka_unit_test(test_threads),
	};
	return cmocka_run_group_tests(tests, setup, teardown);
}
