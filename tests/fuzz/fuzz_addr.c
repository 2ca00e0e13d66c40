/* Fuzz target: contact addresses and phone numbers (untrusted contact
 * data) through the validators; a valid result must be re-accepted as is
 * and can never contain CR, LF, NUL, '<' or '>'. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "engine/addr.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *in = malloc(size + 1), out[300], out2[300], err[300];
	memcpy(in, data, size);
	in[size] = 0;
	if (addr_normalize(in, out, sizeof out, err, sizeof err) == 0) {
		if (strpbrk(out, "\r\n<>") || addr_normalize(out, out2,
		    sizeof out2, err, sizeof err) != 0 || strcmp(out, out2))
			abort();
	}
	addr_phone_e164(in, out, sizeof out, err, sizeof err);
	free(in);
	return 0;
}
