/* Unit tests for the pure parts of engine/smtp: the reply parser (split at
 * every byte, multi-line, enhanced codes, malformed, huge), EHLO keywords,
 * reply classification and the envelope/data checks. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/smtp.h"

static const struct {
	const char *in;
	int code;          /* 0 = malformed */
	const char *enh;
	const char *text;
} replies[] = {
	{ "250 ok\r\n", 250, "", "ok" },
	{ "250-mx.test\r\n250-PIPELINING\r\n250 SIZE 1000\r\n", 250, "",
	  "mx.test\nPIPELINING\nSIZE 1000" },
	{ "550 5.1.1 <a@b>: user unknown\r\n", 550, "5.1.1",
	  "5.1.1 <a@b>: user unknown" },
	{ "451 4.7.1 try later\n", 451, "4.7.1", "4.7.1 try later" },
	{ "354\r\n", 354, "", "" },
	{ "250-a\r\n251 b\r\n", 0, "", "" },     /* mixed codes */
	{ "2x0 nope\r\n", 0, "", "" },
	{ "25\r\n", 0, "", "" },
	{ "250xok\r\n", 0, "", "" },
	{ "220 \x01\x7f bell\r\n", 220, "", "?? bell" },
};

static void test_reply_parser(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof replies / sizeof *replies; i++) {
		const char *in = replies[i].in;
		size_t n = strlen(in);
		/* Split at every position: the result never changes. */
		for (size_t cut = 0; cut <= n; cut++) {
			struct smtp_reply r;
			smtp_reply_init(&r);
			size_t used = smtp_reply_feed(&r, in, cut);
			if (!r.code && !r.error)
				used += smtp_reply_feed(&r, in + used, n - used);
			if (replies[i].code == 0) {
				if (!r.error)
					fail_msg("%zu: %s accepted", i, in);
				continue;
			}
			if (r.error || r.code != replies[i].code ||
			    strcmp(r.enhanced, replies[i].enh) ||
			    strcmp(r.text, replies[i].text))
				fail_msg("%zu cut %zu: code %d enh '%s' text '%s'", i, cut,
					r.code, r.enhanced, r.text);
			assert_int_equal(used, n);
		}
	}
}

static void test_reply_bounded(void **state)
{
	(void)state;
	/* 10 MB of continuation lines and a 1 MB line: memory stays bounded,
	 * the reply completes. */
	struct smtp_reply r;
	smtp_reply_init(&r);
	char line[64];
	for (int i = 0; i < 200000 && !r.code; i++) {
		int l = snprintf(line, sizeof line, "250-%040d\r\n", i);
		smtp_reply_feed(&r, line, (size_t)l);
	}
	char *big = malloc(1 << 20);
	memset(big, 'x', 1 << 20);
	smtp_reply_feed(&r, "250-", 4);
	smtp_reply_feed(&r, big, 1 << 20);
	smtp_reply_feed(&r, "\r\n250 end\r\n", 11);
	assert_int_equal(r.code, 250);
	assert_true(r.len < sizeof r.text);
	free(big);
	/* Two replies in one buffer: the parser stops after the first. */
	smtp_reply_init(&r);
	const char *two = "250 a\r\n354 go\r\n";
	size_t u = smtp_reply_feed(&r, two, strlen(two));
	assert_int_equal(r.code, 250);
	assert_int_equal(u, 7);
}

static void test_ehlo(void **state)
{
	(void)state;
	unsigned long long size;
	unsigned e = smtp_parse_ehlo("mx.test hello\nPIPELINING\nsize 52428800\n"
		"8BITMIME\nSTARTTLS\nENHANCEDSTATUSCODES\nSMTPUTF8\nCHUNKING", &size);
	assert_int_equal(e, SMTP_EXT_PIPELINING | SMTP_EXT_SIZE |
		SMTP_EXT_8BITMIME | SMTP_EXT_STARTTLS | SMTP_EXT_ENHANCED |
		SMTP_EXT_SMTPUTF8);
	assert_true(size == 52428800ULL);
	e = smtp_parse_ehlo("only a greeting", &size);
	assert_int_equal(e, 0);
}

static const struct {
	int code;
	const char *enh, *text;
	enum smtp_kind kind;
	enum smtp_cat cat;
} classes[] = {
	{ 250, "2.0.0", "Ok: queued", SMTP_DELIVERED, SMTP_CAT_NONE },
	{ 550, "5.1.1", "user unknown", SMTP_BOUNCED, SMTP_CAT_BAD_MAILBOX },
	{ 550, "", "Requested action not taken: mailbox unavailable",
	  SMTP_BOUNCED, SMTP_CAT_BAD_MAILBOX },
	{ 552, "5.2.2", "mailbox full", SMTP_BOUNCED, SMTP_CAT_MAILBOX_FULL },
	{ 452, "4.2.2", "over quota", SMTP_DEFERRED, SMTP_CAT_MAILBOX_FULL },
	{ 550, "", "Caixa cheia", SMTP_BOUNCED, SMTP_CAT_MAILBOX_FULL },
	{ 552, "5.3.4", "message too big", SMTP_BOUNCED, SMTP_CAT_TOO_LARGE },
	{ 552, "", "Message size exceeds fixed limit", SMTP_BOUNCED,
	  SMTP_CAT_TOO_LARGE },
	{ 550, "5.7.1", "Message rejected as spam", SMTP_BOUNCED,
	  SMTP_CAT_POLICY_SPAM },
	{ 554, "", "Service unavailable; client host blocked using zen",
	  SMTP_BOUNCED, SMTP_CAT_POLICY_SPAM },
	{ 550, "5.7.26", "Unauthenticated email from x is not accepted due "
	  "to domain's DMARC policy", SMTP_BOUNCED, SMTP_CAT_AUTH_DMARC },
	{ 550, "5.7.1", "SPF check failed", SMTP_BOUNCED, SMTP_CAT_AUTH_DMARC },
	{ 421, "4.7.0", "Try again later, closing connection", SMTP_DEFERRED,
	  SMTP_CAT_POLICY_SPAM },
	{ 451, "4.3.0", "temporary failure", SMTP_DEFERRED, SMTP_CAT_OTHER },
	{ 554, "5.0.0", "something else", SMTP_BOUNCED, SMTP_CAT_OTHER },
};

static void test_classify(void **state)
{
	(void)state;
	for (size_t i = 0; i < sizeof classes / sizeof *classes; i++) {
		enum smtp_cat c;
		enum smtp_kind k = smtp_classify(classes[i].code, classes[i].enh,
			classes[i].text, &c);
		if (k != classes[i].kind || c != classes[i].cat)
			fail_msg("%d %s %s: kind %d cat %s", classes[i].code,
				classes[i].enh, classes[i].text, k,
				smtp_cat_name(c) ? smtp_cat_name(c) : "none");
	}
}

static void test_checks(void **state)
{
	(void)state;
	assert_true(smtp_envelope_ok("a@b.test"));
	assert_false(smtp_envelope_ok("a@b.test>\r\nRCPT TO:<x@y"));
	assert_false(smtp_envelope_ok("a b@c"));
	assert_false(smtp_envelope_ok(""));
	assert_false(smtp_envelope_ok("a@b\n"));
	const char *good = "Subject: x\r\n\r\n..dot\r\nbody\r\n";
	assert_true(smtp_data_ok(good, strlen(good)));
	const char *bare_lf = "Subject: x\n\r\nbody\r\n";
	assert_false(smtp_data_ok(bare_lf, strlen(bare_lf)));
	const char *bare_cr = "Subject: x\r\r\nbody\r\n";
	assert_false(smtp_data_ok(bare_cr, strlen(bare_cr)));
	const char *dot = "Subject: x\r\n\r\n.\r\nMAIL FROM:<x>\r\n";
	assert_false(smtp_data_ok(dot, strlen(dot)));
	const char *first = ".\r\n";
	assert_false(smtp_data_ok(first, 3));
	const char *noend = "a\r\nb";
	assert_false(smtp_data_ok(noend, strlen(noend)));
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_reply_parser),
		cmocka_unit_test(test_reply_bounded),
		cmocka_unit_test(test_ehlo),
		cmocka_unit_test(test_classify),
		cmocka_unit_test(test_checks),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
