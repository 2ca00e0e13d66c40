/* Unit tests for engine/addr: a table of valid and invalid addresses
 * (IDN, quoted local parts, length limits, injection attempts) and phones. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <stdio.h>
#include <string.h>

#include "engine/addr.h"

static const struct {
	const char *in, *out;   /* out NULL = invalid */
} addrs[] = {
	{ "joao@exemplo.com.br", "joao@exemplo.com.br" },
	{ "  Maria.Silva+news@Exemplo.COM.BR ", "Maria.Silva+news@exemplo.com.br" },
	{ "user@açaí.com.br", "user@xn--aa-4iaz.com.br" },
	{ "x@JOÃO.test", "x@xn--joo-nla.test" },
	{ "\"ana maria\"@exemplo.com", "\"ana maria\"@exemplo.com" },
	{ "o'brien@exemplo.ie", "o'brien@exemplo.ie" },
	{ "a@b.test.", "a@b.test" },
	{ "joão@exemplo.com.br", NULL },        /* needs SMTPUTF8 */
	{ "a@b.com\r\nBcc: x@y.test", NULL },
	{ "a@b.com\nRCPT TO:<x@y>", NULL },
	{ "<a@b.com>", NULL },
	{ "a b@c.com", NULL },
	{ "ab.c.com", NULL },
	{ "@c.com", NULL },
	{ "a@", NULL },
	{ "a@localhost", NULL },
	{ ".a@c.com", NULL },
	{ "a..b@c.com", NULL },
	{ "a@-c.com", NULL },
	{ "a@c..com", NULL },
	{ "a@c_d.com", NULL },
	{ "\"unterminated@c.com", NULL },
	{ "", NULL },
};

static void test_addresses(void **state)
{
	(void)state;
	char out[300], err[300];
	for (size_t i = 0; i < sizeof addrs / sizeof *addrs; i++) {
		int rc = addr_normalize(addrs[i].in, out, sizeof out, err,
			sizeof err);
		if (addrs[i].out && (rc != 0 || strcmp(out, addrs[i].out)))
			fail_msg("%s: rc %d out %s err %s", addrs[i].in, rc, out, err);
		if (!addrs[i].out && rc == 0)
			fail_msg("%s accepted as %s", addrs[i].in, out);
		if (rc != 0) {
			assert_null(strchr(err, '\r'));
			assert_null(strchr(err, '\n'));
		}
	}
}

static void test_lengths(void **state)
{
	(void)state;
	char in[600], out[300], err[300];
	memset(in, 'a', 64);
	strcpy(in + 64, "@x.test");
	assert_int_equal(addr_normalize(in, out, sizeof out, err, sizeof err), 0);
	memset(in, 'a', 65);
	strcpy(in + 65, "@x.test");
	assert_int_equal(addr_normalize(in, out, sizeof out, err, sizeof err), -1);
	/* 63-octet labels pass, 64 do not; 254 octets in all at most. */
	char lab[70];
	memset(lab, 'b', 63);
	lab[63] = 0;
	snprintf(in, sizeof in, "a@%s.test", lab);
	assert_int_equal(addr_normalize(in, out, sizeof out, err, sizeof err), 0);
	snprintf(in, sizeof in, "a@%sb.test", lab);
	assert_int_equal(addr_normalize(in, out, sizeof out, err, sizeof err), -1);
	snprintf(in, sizeof in, "a@%s.%s.%s.%s.test", lab, lab, lab, lab);
	assert_int_equal(addr_normalize(in, out, sizeof out, err, sizeof err), -1);
}

static void test_phones(void **state)
{
	(void)state;
	static const struct { const char *in, *out; } p[] = {
		{ "+55 (11) 98765-4321", "+5511987654321" },
		{ "(11) 98765-4321", "+5511987654321" },
		{ "11 3456-7890", "+551134567890" },
		{ "+1 415 555 0100", "+14155550100" },
		{ "98765-4321", NULL },
		{ "+55 11 9876x4321", NULL },
		{ "+0123456789", NULL },
		{ "+1234567890123456", NULL },
		{ "", NULL },
	};
	char out[40], err[200];
	for (size_t i = 0; i < sizeof p / sizeof *p; i++) {
		int rc = addr_phone_e164(p[i].in, out, sizeof out, err, sizeof err);
		if (p[i].out && (rc || strcmp(out, p[i].out)))
			fail_msg("%s: rc %d out %s", p[i].in, rc, out);
		if (!p[i].out && rc == 0)
			fail_msg("%s accepted as %s", p[i].in, out);
	}
}

int main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_addresses),
		cmocka_unit_test(test_lengths),
		cmocka_unit_test(test_phones),
	};
	return cmocka_run_group_tests(tests, NULL, NULL);
}
