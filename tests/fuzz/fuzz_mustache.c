/* Fuzz target: the input is compiled as a template (and as a partial of
 * itself) and rendered against a fixed context in both escape modes. */
#include <stdint.h>
#include <string.h>

#include "templates/mustache.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char err[256];
	const char *src = (const char *)data;
	json_t *ctx = json_loads("{\"name\":\"João <b>\",\"n\":12.5,\"cart\":"
		"[{\"name\":\"Café\",\"price\":9.9,\"qty\":2},{\"price\":\"1,5\"}],"
		"\"e\":\"\",\"t\":true,\"o\":{\"a\":{\"b\":\"x\"}},\"p\":\"self\"}",
		0, NULL);
	mu_set *set = mu_set_new();
	mu_set_add(set, "self", src, size, err, sizeof err);
	mu_set_add(set, "half", src, size / 2, err, sizeof err);
	for (int esc = 0; esc < 2; esc++) {
		mu_tpl *t = mu_compile(set, "fuzz", src, size,
			esc ? MU_ESCAPE_HTML : MU_ESCAPE_NONE, err, sizeof err);
		if (!t)
			continue;
		buf_t out = BUF_INIT;
		const json_t *c[1] = { ctx };
		mu_render(t, c, 1, &out, err, sizeof err);
		buf_free(&out);
		mu_tpl_free(t);
	}
	mu_set_free(set);
	json_decref(ctx);
	return 0;
}
