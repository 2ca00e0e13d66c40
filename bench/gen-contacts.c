/*
 * carteiro-gen — deterministic synthetic contact lists for tests and benches.
 *
 *   carteiro-gen --contacts N --domains D --format csv|ndjson --out FILE
 *                [--seed S] [--cart] [--phones] [--domain-suffix test]
 *   carteiro-gen --domains D --list-domains [--domain-suffix test]
 *
 * Brazilian names with accents (UTF-8), unique addresses (the contact index
 * is part of the local part), and a skewed domain mix: a few large providers
 * carry most contacts and a long Zipf-like tail of small domains (d0001.test
 * …) carries the rest. The same seed gives the same file byte for byte; the
 * domain list depends only on D and the suffix, so the DNS world built from
 * --list-domains matches any contact file made with the same D.
 */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "engine/buf.h"
#include "engine/mem.h"

struct name { const char *text, *ascii; };

static const struct name firsts[] = {
	{"João", "joao"}, {"Conceição", "conceicao"}, {"Maria", "maria"},
	{"José", "jose"}, {"Antônio", "antonio"}, {"Luíza", "luiza"},
	{"Gonçalo", "goncalo"}, {"Inês", "ines"}, {"Ângela", "angela"},
	{"Ana", "ana"}, {"Francisco", "francisco"}, {"Letícia", "leticia"},
	{"Márcia", "marcia"}, {"Sebastião", "sebastiao"}, {"Débora", "debora"},
	{"Lúcia", "lucia"}, {"Fábio", "fabio"}, {"Vitória", "vitoria"},
	{"Júlia", "julia"}, {"Cecília", "cecilia"}, {"Mônica", "monica"},
	{"Raimundo", "raimundo"}, {"Beatriz", "beatriz"}, {"Lucas", "lucas"},
	{"Gabriel", "gabriel"}, {"Heloísa", "heloisa"}, {"Otávio", "otavio"},
	{"Cláudia", "claudia"}, {"Jéssica", "jessica"}, {"Rogério", "rogerio"},
	{"Patrícia", "patricia"}, {"André", "andre"}, {"Sérgio", "sergio"},
	{"Flávia", "flavia"}, {"Caio", "caio"}, {"Tânia", "tania"},
};
static const struct name lasts[] = {
	{"Silva", "silva"}, {"Gonçalves", "goncalves"}, {"Araújo", "araujo"},
	{"Conceição", "conceicao"}, {"Magalhães", "magalhaes"}, {"Brandão", "brandao"},
	{"Santos", "santos"}, {"Oliveira", "oliveira"}, {"Souza", "souza"},
	{"Pereira", "pereira"}, {"Lima", "lima"}, {"Ferreira", "ferreira"},
	{"Rodrigues", "rodrigues"}, {"Alves", "alves"}, {"Nascimento", "nascimento"},
	{"Simões", "simoes"}, {"Falcão", "falcao"}, {"Guimarães", "guimaraes"},
	{"Assunção", "assuncao"}, {"Gusmão", "gusmao"}, {"Damásio", "damasio"},
	{"Romão", "romao"}, {"Ribeiro", "ribeiro"}, {"Carvalho", "carvalho"},
	{"Gomes", "gomes"}, {"Martins", "martins"}, {"Rocha", "rocha"},
	{"Barbosa", "barbosa"}, {"Sá", "sa"}, {"Estêvão", "estevao"},
};
struct city { const char *name; int ddd; };
static const struct city cities[] = {
	{"São Paulo", 11}, {"Rio de Janeiro", 21}, {"Belo Horizonte", 31},
	{"Salvador", 71}, {"Fortaleza", 85}, {"Curitiba", 41}, {"Recife", 81},
	{"Porto Alegre", 51}, {"Brasília", 61}, {"Manaus", 92}, {"Belém", 91},
	{"Goiânia", 62}, {"Florianópolis", 48}, {"São Luís", 98}, {"Maceió", 82},
	{"Natal", 84}, {"João Pessoa", 83}, {"Vitória", 27}, {"Campinas", 19},
	{"Ribeirão Preto", 16}, {"Cuiabá", 65}, {"Teresina", 86},
};
struct product { const char *name; unsigned cents; };
static const struct product products[] = {
	{"Camiseta básica", 4990}, {"Tênis de corrida", 29990},
	{"Caneca de cerâmica", 3490}, {"Fone de ouvido", 15990}, {"Mochila", 18900},
	{"Garrafa térmica", 8990}, {"Livro de receitas", 5490},
	{"Óculos de sol", 12990}, {"Relógio", 45900}, {"Perfume", 21990},
	{"Café especial 500g", 3990}, {"Chinelo", 2990}, {"Toalha de banho", 4490},
	{"Capinha de celular", 2490}, {"Luminária", 9990}, {"Pão de queijo (1 kg)", 3290},
};
#define N(a) (sizeof(a) / sizeof((a)[0]))

/* The big providers and their share of all contacts. */
struct big { const char *label; double share; };
static const struct big bigs[] = {
	{"gmail", 0.45}, {"outlook", 0.12}, {"hotmail", 0.08}, {"yahoo", 0.08},
	{"uol", 0.05}, {"bol", 0.03}, {"terra", 0.02},
};

struct domains {
	char **name;
	double *cum;   /* cumulative share, last = 1 */
	size_t n;
};

static uint64_t
rng_next(uint64_t *s)
{
	/* splitmix64: tiny, fast, good enough for synthetic data. */
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

static double
rng_unit(uint64_t *s)
{
	return (double)(rng_next(s) >> 11) / 9007199254740992.0;
}

static void
domains_build(struct domains *d, size_t n, const char *suffix)
{
	size_t nbig = n < N(bigs) ? n : N(bigs);
	size_t ntail = n - nbig;
	double bigsum = 0, tailshare, z = 0;
	d->n = n;
	d->name = mem_calloc(n, sizeof *d->name);
	d->cum = mem_calloc(n, sizeof *d->cum);
	for (size_t i = 0; i < nbig; i++)
		bigsum += bigs[i].share;
	tailshare = ntail ? 1.0 - bigsum : 0;
	for (size_t i = 1; i <= ntail; i++)
		z += 1.0 / pow((double)i, 0.8);
	double acc = 0;
	for (size_t i = 0; i < n; i++) {
		buf_t b = BUF_INIT;
		double share;
		if (i < nbig) {
			buf_printf(&b, "%s.%s", bigs[i].label, suffix);
			share = ntail ? bigs[i].share : bigs[i].share / bigsum;
		} else {
			size_t k = i - nbig + 1;
			buf_printf(&b, "d%04zu.%s", k, suffix);
			share = tailshare / pow((double)k, 0.8) / z;
		}
		d->name[i] = buf_steal(&b, NULL);
		acc += share;
		d->cum[i] = acc;
	}
	d->cum[n - 1] = 1.0;
}

static size_t
domains_pick(const struct domains *d, double u)
{
	size_t lo = 0, hi = d->n - 1;
	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (d->cum[mid] > u)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo;
}

static void
usage(FILE *f)
{
	fputs("usage: carteiro-gen --contacts N --domains D [--format csv|ndjson] "
	    "[--out FILE] [--seed S] [--cart] [--phones] [--domain-suffix test]\n"
	    "       carteiro-gen --domains D --list-domains [--domain-suffix test]\n", f);
}

static void
json_price(buf_t *b, unsigned cents)
{
	buf_printf(b, "%u.%02u", cents / 100, cents % 100);
}

int
main(int argc, char **argv)
{
	unsigned long long ncontacts = 0, ndomains = 0, seed = 1;
	const char *format = "csv", *out = NULL, *suffix = "test";
	int cart = 0, phones = 0, list = 0;
	static const struct option lo[] = {
		{"contacts", required_argument, NULL, 'n'},
		{"domains", required_argument, NULL, 'd'},
		{"format", required_argument, NULL, 'f'},
		{"out", required_argument, NULL, 'o'},
		{"seed", required_argument, NULL, 's'},
		{"cart", no_argument, NULL, 'c'},
		{"phones", no_argument, NULL, 'p'},
		{"domain-suffix", required_argument, NULL, 'x'},
		{"list-domains", no_argument, NULL, 'L'},
		{"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	int ch;
	while ((ch = getopt_long(argc, argv, "n:d:f:o:s:cpx:Lh", lo, NULL)) != -1) {
		switch (ch) {
		case 'n': ncontacts = strtoull(optarg, NULL, 10); break;
		case 'd': ndomains = strtoull(optarg, NULL, 10); break;
		case 'f': format = optarg; break;
		case 'o': out = optarg; break;
		case 's': seed = strtoull(optarg, NULL, 10); break;
		case 'c': cart = 1; break;
		case 'p': phones = 1; break;
		case 'x': suffix = optarg; break;
		case 'L': list = 1; break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	int ndjson = strcmp(format, "ndjson") == 0;
	if (ndomains == 0 || ndomains > 1000000 || (!ndjson && strcmp(format, "csv") != 0) ||
	    (!list && ncontacts == 0) || strpbrk(suffix, " \t\r\n,\"") != NULL) {
		usage(stderr);
		return 2;
	}
	struct domains d;
	domains_build(&d, (size_t)ndomains, suffix);
	FILE *f = stdout;
	if (out != NULL && (f = fopen(out, "w")) == NULL) {
		fprintf(stderr, "carteiro-gen: %s: %s\n", out, strerror(errno));
		return 1;
	}
	buf_t b = BUF_INIT;
	if (list) {
		double prev = 0;
		for (size_t i = 0; i < d.n; i++) {
			buf_printf(&b, "%s %.6f\n", d.name[i], d.cum[i] - prev);
			prev = d.cum[i];
		}
	} else {
		uint64_t rs = seed * 0x2545f4914f6cdd1dULL + 1;
		if (!ndjson)
			buf_printf(&b, "email,first_name,last_name,city,phone%s\n",
			    cart ? ",cart_items,cart_total" : "");
		for (unsigned long long i = 0; i < ncontacts; i++) {
			const struct name *fn = &firsts[rng_next(&rs) % N(firsts)];
			const struct name *ln = &lasts[rng_next(&rs) % N(lasts)];
			const struct city *ci = &cities[rng_next(&rs) % N(cities)];
			const char *dom = d.name[domains_pick(&d, rng_unit(&rs))];
			char phone[32] = "";
			if (phones)
				snprintf(phone, sizeof phone, "+55%d9%08u", ci->ddd,
				    (unsigned)(rng_next(&rs) % 100000000u));
			/* The index keeps every address unique. */
			char email[256];
			snprintf(email, sizeof email, "%s.%s.%llu@%s", fn->ascii, ln->ascii, i, dom);
			unsigned nitems = cart ? 1 + (unsigned)(rng_next(&rs) % 5) : 0;
			if (ndjson) {
				buf_printf(&b, "{\"email\":\"%s\",\"first_name\":\"%s\","
				    "\"last_name\":\"%s\",\"city\":\"%s\"", email, fn->text,
				    ln->text, ci->name);
				if (phones)
					buf_printf(&b, ",\"phone\":\"%s\"", phone);
				if (cart) {
					buf_adds(&b, ",\"cart\":[");
					for (unsigned k = 0; k < nitems; k++) {
						const struct product *p =
						    &products[rng_next(&rs) % N(products)];
						unsigned qty = 1 + (unsigned)(rng_next(&rs) % 3);
						buf_printf(&b, "%s{\"name\":\"%s\",\"price\":",
						    k ? "," : "", p->name);
						json_price(&b, p->cents);
						buf_printf(&b, ",\"qty\":%u}", qty);
					}
					buf_adds(&b, "]");
				}
				buf_adds(&b, "}\n");
			} else {
				buf_printf(&b, "%s,%s,%s,%s,%s", email, fn->text, ln->text,
				    ci->name, phone);
				if (cart) {
					unsigned total = 0;
					for (unsigned k = 0; k < nitems; k++) {
						const struct product *p =
						    &products[rng_next(&rs) % N(products)];
						total += p->cents * (1 + (unsigned)(rng_next(&rs) % 3));
					}
					buf_printf(&b, ",%u,", nitems);
					json_price(&b, total);
				}
				buf_addc(&b, '\n');
			}
			if (b.len > (1u << 20)) {
				fwrite(b.p, 1, b.len, f);
				buf_reset(&b);
			}
		}
	}
	fwrite(b.p, 1, b.len, f);
	buf_free(&b);
	int rc = 0;
	if (ferror(f) || (f != stdout && fclose(f) != 0) || (f == stdout && fflush(f) != 0)) {
		fprintf(stderr, "carteiro-gen: write %s: %s\n", out ? out : "stdout", strerror(errno));
		rc = 1;
	}
	for (size_t i = 0; i < d.n; i++)
		free(d.name[i]);
	free(d.name);
	free(d.cum);
	return rc;
}
