/* Fuzz target: arbitrary bytes as a Cloud API reply (wa_parse_reply), as
 * template parameters (wa_build_body) and as an api_url (wa_check_url).
 * Untrusted input: what the API (or anything in between) answers, and
 * contact data. The first byte picks the HTTP status. Invariants: results
 * are bounded, printable ASCII, and the body stays one line. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/whatsapp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
printable(const char *s)
{
	size_t n = strlen(s);
	if (n >= WA_MESSAGE_MAX)
		abort();
	for (size_t i = 0; i < n; i++)
		if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
			abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const long statuses[] = { 200, 400, 401, 429, 500, 0, 302, 201 };
	if (size == 0)
		return 0;
	long status = statuses[data[0] % 8];
	struct wa_result r;
	char scratch[3][WA_MESSAGE_MAX];
	wa_parse_reply(status, (const char *)data + 1, size - 1, &r, scratch);
	printable(r.message);
	printable(r.message_id);
	printable(r.wa_id);
	if (r.kind == WA_SENT && r.message_id[0] == '\0')
		abort();

	/* The same bytes as NUL-separated parameters and as a URL. */
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = '\0';
	const char *params[8];
	size_t np = 0;
	for (size_t i = 0; i < size && np < 8; i += strlen(s + i) + 1)
		params[np++] = s + i;
	struct wa_msg m = { "5511999990001", "t", "pt_BR", params, np };
	buf_t b = BUF_INIT;
	char err[256];
	if (wa_build_body(&m, &b, err, sizeof err) == 0 &&
	    (memchr(b.p, '\n', b.len) || memchr(b.p, '\r', b.len)))
		abort();
	buf_free(&b);
	wa_check_url(s, err, sizeof err);
	free(s);
	return 0;
}
