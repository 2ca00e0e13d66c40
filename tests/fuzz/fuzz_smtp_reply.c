/* Fuzz target: arbitrary server bytes through the SMTP reply parser, fed
 * in chunks, then EHLO keyword parsing and classification of what came
 * out. Untrusted input: what any remote server sends. */
#include <stdint.h>
#include <string.h>

#include "engine/smtp.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	struct smtp_reply r;
	smtp_reply_init(&r);
	size_t off = 0, step = size ? (size_t)data[0] % 7 + 1 : 1;
	while (off < size) {
		size_t n = size - off < step ? size - off : step;
		size_t used = smtp_reply_feed(&r, (const char *)data + off, n);
		off += used ? used : n;
		if (r.error)
			break;
		if (r.code) {
			unsigned long long sz;
			enum smtp_cat cat;
			smtp_parse_ehlo(r.text, &sz);
			smtp_classify(r.code, r.enhanced, r.text, &cat);
			smtp_reply_init(&r);
		}
	}
	char *s = malloc(size + 1);
	memcpy(s, data, size);
	s[size] = 0;
	smtp_envelope_ok(s);
	smtp_data_ok(s, size);
	free(s);
	return 0;
}
