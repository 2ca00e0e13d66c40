/* Unit tests for templates/unsub: token round trip, tamper detection,
 * recipient binding, header value formatting. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <cmocka.h>

#include "templates/unsub.h"

static const unsigned char secret[] = "0123456789abcdef-engine-secret";
#define SL (sizeof secret - 1)

struct rt_case {
	uint64_t camp, msg;
	const char *rcpt;
};

static void
test_round_trip(void **state)
{
	(void)state;
	const struct rt_case cases[] = {
		{ 1, 1, "maria@example.com" },
		{ 0, 0, "a@b" },
		{ UINT64_MAX, UINT64_MAX - 1, "joão@exemplo.com.br" },
		{ 42, 1234567890123ULL, "x+tag@Example.COM" },
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		char tok[UNSUB_TOKEN_LEN + 1];
		uint64_t c = 7, m = 7;
		assert_int_equal(unsub_token_make(secret, SL, cases[i].camp,
		    cases[i].msg, cases[i].rcpt, tok), 0);
		assert_int_equal(strlen(tok), UNSUB_TOKEN_LEN);
		assert_int_equal(strspn(tok, "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghij"
		    "klmnopqrstuvwxyz0123456789-_"), UNSUB_TOKEN_LEN);
		assert_int_equal(unsub_token_verify(secret, SL, tok,
		    cases[i].rcpt, &c, &m), 0);
		assert_true(c == cases[i].camp && m == cases[i].msg);
		c = m = 0;
		assert_int_equal(unsub_token_peek(tok, &c, &m), 0);
		assert_true(c == cases[i].camp && m == cases[i].msg);
	}
	/* the domain is case-insensitive, the local part is not */
	char tok[UNSUB_TOKEN_LEN + 1];
	uint64_t c, m;
	unsub_token_make(secret, SL, 1, 2, "Maria@Example.com", tok);
	assert_int_equal(unsub_token_verify(secret, SL, tok, "Maria@EXAMPLE.COM", &c, &m), 0);
	assert_int_equal(unsub_token_verify(secret, SL, tok, "maria@example.com", &c, &m), -1);
}

static void
test_tamper(void **state)
{
	(void)state;
	char tok[UNSUB_TOKEN_LEN + 1], t2[UNSUB_TOKEN_LEN + 1];
	uint64_t c, m;
	const unsigned char other[] = "another-secret-of-enough-length";
	assert_int_equal(unsub_token_make(secret, SL, 42, 99, "maria@example.com", tok), 0);
	/* every single-character change is rejected */
	for (size_t i = 0; i < UNSUB_TOKEN_LEN; i++) {
		memcpy(t2, tok, sizeof t2);
		t2[i] = t2[i] == 'A' ? 'B' : 'A';
		assert_int_equal(unsub_token_verify(secret, SL, t2,
		    "maria@example.com", &c, &m), -1);
	}
	assert_int_equal(unsub_token_verify(secret, SL, tok, "jose@example.com", &c, &m), -1);
	assert_int_equal(unsub_token_verify(other, sizeof other - 1, tok,
	    "maria@example.com", &c, &m), -1);
	const char *bad[] = { "", "short", "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
	    "AQAAAAAAAAAqAAAAAAAAAGMAAAAAAAAAAAAAAAAAAAA=",
	    "AQAAAAAAAAAqAAAAAAAAAGMAAAAAAAAAAAAAAAAAAAA+",
	    "AQAAAAAAAAAqAAAAAAAAAGMAAAAAAAAAAAAAAAAAAAAAA" };
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
		assert_int_equal(unsub_token_verify(secret, SL, bad[i],
		    "maria@example.com", &c, &m), -1);
	/* weak secret, bad recipient */
	assert_int_equal(unsub_token_make(secret, 8, 1, 1, "a@b", tok), -1);
	assert_int_equal(unsub_token_make(secret, SL, 1, 1, "no-at", tok), -1);
	assert_int_equal(unsub_token_make(secret, SL, 1, 1, "", tok), -1);
}

struct hv_case {
	const char *url, *domain, *want;
};

static void
test_header_value(void **state)
{
	(void)state;
	char tok[UNSUB_TOKEN_LEN + 1], want[512];
	unsub_token_make(secret, SL, 42, 99, "maria@example.com", tok);
	const struct hv_case ok[] = {
		{ "https://loja.example/u", "loja.example",
		  "<https://loja.example/u?t=%s>, <mailto:unsubscribe@loja.example?subject=%s>" },
		{ "https://loja.example/u?c=1", NULL, "<https://loja.example/u?c=1&t=%s>" },
	};
	for (size_t i = 0; i < sizeof ok / sizeof ok[0]; i++) {
		buf_t b = BUF_INIT;
		char err[128];
		assert_int_equal(unsub_header_value(ok[i].url, ok[i].domain, tok,
		    &b, err, sizeof err), 0);
		snprintf(want, sizeof want, ok[i].want, tok, tok);
		assert_string_equal(b.p, want);
		buf_free(&b);
	}
	const struct hv_case bad[] = {
		{ "http://loja.example/u", NULL, NULL },
		{ "https://loja.example/u>, <https://evil", NULL, NULL },
		{ "https://loja.example/u\r\nBcc: x", NULL, NULL },
		{ "https://loja.example/a b", NULL, NULL },
		{ "https://loja.example/u#frag", NULL, NULL },
		{ "https://loja.example/u", "bad domain>", NULL },
	};
	for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
		buf_t b = BUF_INIT;
		char err[128] = "";
		assert_int_equal(unsub_header_value(bad[i].url, bad[i].domain, tok,
		    &b, err, sizeof err), -1);
		assert_true(strlen(err) > 0);
		assert_int_equal(b.len, 0);
		buf_free(&b);
	}
	buf_t b = BUF_INIT;
	assert_int_equal(unsub_header_value("https://x.example/", NULL, "bad", &b, NULL, 0), -1);
	buf_free(&b);
	assert_string_equal(UNSUB_POST_VALUE, "List-Unsubscribe=One-Click");
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_round_trip),
		cmocka_unit_test(test_tamper),
		cmocka_unit_test(test_header_value),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
