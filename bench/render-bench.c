/*
 * render-bench — renders a ~10 KB HTML newsletter (~20 substitutions, a cart
 * loop of 3–5 items, helpers) against generated contacts on one thread for a
 * bounded time and count; prints renders/s and µs/render.
 * Usage: render-bench [--seconds S] [--max N] [--json FILE]
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <jansson.h>

#include "engine/buf.h"
#include "templates/mustache.h"

static double now(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
	double seconds = 2.0;
	long max = 10000000;
	const char *json_out = NULL;
	for (int i = 1; i < argc; i++) {
		if (!strcmp(argv[i], "--seconds") && i + 1 < argc) seconds = atof(argv[++i]);
		else if (!strcmp(argv[i], "--max") && i + 1 < argc) max = atol(argv[++i]);
		else if (!strcmp(argv[i], "--json") && i + 1 < argc) json_out = argv[++i];
		else { fprintf(stderr, "usage: %s [--seconds S] [--max N] [--json FILE]\n", argv[0]); return 2; }
	}
	buf_t src = BUF_INIT;
	buf_adds(&src, "<html><head><title>{{store}} — ofertas</title></head><body>\n"
	    "<h1>Olá, {{ first_name | default: \"cliente\" }}!</h1>\n"
	    "<p>{{#city}}Entregamos em {{city}}/{{state}}.{{/city}}</p>\n");
	static const char filler[] = "<p style=\"font-family:Arial;color:#333\">Lorem ipsum dolor sit amet, "
	    "consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.</p>\n";
	for (int i = 0; i < 14; i++) {
		buf_adds(&src, filler);
		buf_printf(&src, "<p>{{first_name}}, oferta {{offer_%d}} por {{ price_%d | brl }}</p>\n", i % 4, i % 4);
	}
	while (src.len < 9000) buf_adds(&src, filler);
	buf_adds(&src, "<table>{{#cart}}<tr><td>{{name}}</td><td>{{qty}}</td><td>{{ price | brl }}</td></tr>{{/cart}}</table>\n"
	    "<p>Total: {{ cart | sum: \"price*qty\" | brl }} ({{ cart | count }} itens)</p>\n"
	    "<p>{{email}} — <a href=\"{{unsubscribe_url}}\">descadastrar</a></p></body></html>\n");
	char err[256];
	mu_tpl *t = mu_compile(NULL, "newsletter.html", src.p, src.len, MU_ESCAPE_HTML, err, sizeof err);
	if (!t) { fprintf(stderr, "%s\n", err); return 1; }

	enum { NC = 1000 };
	json_t **contacts = calloc(NC, sizeof *contacts);
	json_t *camp = json_pack("{s:s}", "store", "Loja Exemplo");
	for (int i = 0; i < NC; i++) {
		char name[32], email[64];
		snprintf(name, sizeof name, "Cliente%d", i);
		snprintf(email, sizeof email, "cliente%d@example.com.br", i);
		json_t *c = json_pack("{s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:s,s:f,s:f,s:f,s:f}",
		    "first_name", name, "email", email, "city", "São Paulo", "state", "SP",
		    "unsubscribe_url", "https://loja.example/u/abcdef0123456789",
		    "offer_0", "Tênis", "offer_1", "Camiseta", "offer_2", "Boné", "offer_3", "Meia",
		    "price_0", 199.9, "price_1", 59.5, "price_2", 39.0, "price_3", 12.99);
		json_t *cart = json_array();
		for (int k = 0; k < 3 + i % 3; k++)
			json_array_append_new(cart, json_pack("{s:s,s:i,s:f}", "name", "Produto", "qty", 1 + k, "price", 10.5 * (k + 1)));
		json_object_set_new(c, "cart", cart);
		contacts[i] = c;
	}
	buf_t out = BUF_INIT;
	long n = 0;
	size_t bytes = 0;
	double t0 = now(), t1 = t0;
	while (n < max && t1 - t0 < seconds) {
		for (int k = 0; k < 100 && n < max; k++, n++) {
			const json_t *ctx[2] = { contacts[n % NC], camp };
			buf_reset(&out);
			if (mu_render(t, ctx, 2, &out, err, sizeof err) < 0) { fprintf(stderr, "%s\n", err); return 1; }
			bytes += out.len;
		}
		t1 = now();
	}
	double el = t1 - t0, rps = (double)n / el, us = el * 1e6 / (double)n;
	printf("template %zu bytes, output ~%zu bytes/render\n", src.len, bytes / (size_t)n);
	printf("%ld renders in %.3f s: %.0f renders/s, %.2f us/render\n", n, el, rps, us);
	if (json_out) {
		FILE *f = fopen(json_out, "w");
		if (!f) { perror(json_out); return 1; }
		fprintf(f, "{\"renders\": %ld, \"seconds\": %.6f, \"renders_per_s\": %.1f, \"us_per_render\": %.3f}\n", n, el, rps, us);
		fclose(f);
	}
	for (int i = 0; i < NC; i++) json_decref(contacts[i]);
	free(contacts);
	json_decref(camp);
	buf_free(&out);
	buf_free(&src);
	mu_tpl_free(t);
	return 0;
}
