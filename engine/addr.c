/* addr — see addr.h. */
#include "engine/addr.h"

#include <ctype.h>
#include <idn2.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static bool atext(unsigned char c)
{
	return isalnum(c) || strchr("!#$%&'*+-/=?^_`{|}~", c) != NULL;
}

static int fail(char *err, size_t errlen, const char *in, const char *why)
{
	char shown[80];
	size_t k = 0;
	/* Show the input safely: controls become '?'. */
	for (const char *p = in; *p && k < sizeof shown - 4; p++)
		shown[k++] = (unsigned char)*p < 0x20 || *p == 0x7f ? '?' : *p;
	if (strlen(in) > k)
		memcpy(shown + k, "...", 4);
	else
		shown[k] = 0;
	snprintf(err, errlen, "\"%s\" is not a valid address: %s", shown, why);
	return -1;
}

static int check_local(const char *s, size_t len, char *err, size_t errlen,
	const char *in)
{
	if (len == 0)
		return fail(err, errlen, in, "empty local part");
	if (len > 64)
		return fail(err, errlen, in, "local part longer than 64 octets");
	if (s[0] == '"') {
		if (len < 2 || s[len - 1] != '"')
			return fail(err, errlen, in, "unterminated quoted local part");
		for (size_t i = 1; i < len - 1; i++) {
			unsigned char c = (unsigned char)s[i];
			if (c == '\\') {
				i++;
				if (i >= len - 1 || (unsigned char)s[i] < 0x20)
					return fail(err, errlen, in, "bad escape in quotes");
			} else if (c < 0x20 || c == 0x7f || c == '"') {
				return fail(err, errlen, in, "control character");
			} else if (c >= 0x80) {
				return fail(err, errlen, in, "non-ASCII local part "
					"(needs SMTPUTF8)");
			}
		}
		return 0;
	}
	if (s[0] == '.' || s[len - 1] == '.')
		return fail(err, errlen, in, "local part starts or ends with a dot");
	for (size_t i = 0; i < len; i++) {
		unsigned char c = (unsigned char)s[i];
		if (c == '.') {
			if (s[i + 1] == '.')
				return fail(err, errlen, in, "two dots in a row");
		} else if (c >= 0x80) {
			return fail(err, errlen, in, "non-ASCII local part (needs "
				"SMTPUTF8)");
		} else if (!atext(c)) {
			return fail(err, errlen, in, c < 0x20 || c == 0x7f
				? "control character" : c == ' ' ? "space"
				: "character not allowed in a local part");
		}
	}
	return 0;
}

static int check_domain(const char *d, char *err, size_t errlen,
	const char *in)
{
	size_t len = strlen(d);
	if (len == 0)
		return fail(err, errlen, in, "empty domain");
	if (len > 253)
		return fail(err, errlen, in, "domain longer than 253 octets");
	if (!strchr(d, '.'))
		return fail(err, errlen, in, "domain without a dot");
	size_t lab = 0;
	for (size_t i = 0; i <= len; i++) {
		unsigned char c = (unsigned char)d[i];
		if (c == '.' || c == 0) {
			if (lab == 0)
				return fail(err, errlen, in, "empty domain label");
			if (d[i - 1] == '-' || d[i - lab] == '-')
				return fail(err, errlen, in, "label starts or ends with "
					"a hyphen");
			lab = 0;
			continue;
		}
		if (!isalnum(c) && c != '-')
			return fail(err, errlen, in, "character not allowed in a "
				"domain");
		if (++lab > 63)
			return fail(err, errlen, in, "domain label longer than 63");
	}
	return 0;
}

int addr_normalize(const char *in, char *out, size_t outlen, char *err,
	size_t errlen)
{
	const char *s = in, *e = in + strlen(in);
	while (s < e && (*s == ' ' || *s == '\t'))
		s++;
	while (e > s && (e[-1] == ' ' || e[-1] == '\t'))
		e--;
	for (const char *p = s; p < e; p++)
		if ((unsigned char)*p < 0x20 || *p == 0x7f || *p == '<' ||
		    *p == '>')
			return fail(err, errlen, in, (unsigned char)*p < 0x20 ||
				*p == 0x7f ? "control character" : "'<' or '>'");
	const char *at = NULL;
	for (const char *p = e; p > s; p--)
		if (p[-1] == '@') {
			at = p - 1;
			break;
		}
	if (!at)
		return fail(err, errlen, in, "no '@'");
	if (check_local(s, (size_t)(at - s), err, errlen, in) < 0)
		return -1;
	char dom[512];
	size_t dl = (size_t)(e - at - 1);
	if (dl == 0 || dl >= sizeof dom)
		return fail(err, errlen, in, dl ? "domain too long" : "empty domain");
	memcpy(dom, at + 1, dl);
	dom[dl] = 0;
	if (dom[dl - 1] == '.')
		dom[--dl] = 0;          /* a trailing root dot */
	bool ascii = true;
	for (size_t i = 0; i < dl; i++) {
		if ((unsigned char)dom[i] >= 0x80)
			ascii = false;
		else
			dom[i] = (char)tolower((unsigned char)dom[i]);
	}
	char *alabel = NULL;
	if (!ascii) {
		int rc = idn2_lookup_u8((const uint8_t *)dom, (uint8_t **)&alabel,
			IDN2_NFC_INPUT | IDN2_NONTRANSITIONAL);
		if (rc != IDN2_OK) {
			char why[160];
			snprintf(why, sizeof why, "international domain: %s",
				idn2_strerror(rc));
			return fail(err, errlen, in, why);
		}
	}
	const char *d = alabel ? alabel : dom;
	if (check_domain(d, err, errlen, in) < 0) {
		idn2_free(alabel);
		return -1;
	}
	int n = snprintf(out, outlen, "%.*s@%s", (int)(at - s), s, d);
	idn2_free(alabel);
	if (n < 0 || (size_t)n >= outlen || n > ADDR_MAX)
		return fail(err, errlen, in, "longer than 254 octets");
	return 0;
}

int addr_phone_e164(const char *in, char *out, size_t outlen, char *err,
	size_t errlen)
{
	char digits[32];
	size_t n = 0;
	bool plus = false;
	for (const char *p = in; *p; p++) {
		if (isdigit((unsigned char)*p)) {
			if (n >= 20)
				goto bad;
			digits[n++] = *p;
		} else if (*p == '+' && n == 0 && !plus) {
			plus = true;
		} else if (!strchr(" -().\t", *p)) {
			goto bad;
		}
	}
	digits[n] = 0;
	if (!plus && (n == 10 || n == 11)) {
		/* A Brazilian number typed without country code. */
		if (snprintf(out, outlen, "+55%s", digits) >= (int)outlen)
			goto bad;
		return 0;
	}
	if (!plus || n < 8 || n > 15 || digits[0] == '0')
		goto bad;
	if (snprintf(out, outlen, "+%s", digits) >= (int)outlen)
		goto bad;
	return 0;
bad:
	snprintf(err, errlen, "\"%.40s\" is not a phone number in E.164 form "
		"(+55 11 98765-4321)", in);
	for (char *p = err; *p; p++)
		if ((unsigned char)*p < 0x20)
			*p = '?';
	return -1;
}
