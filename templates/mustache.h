/*
 * mustache — Mustache templates, compiled once, rendered many times from
 * many threads (prefix mu_). docs/templates.md describes the language.
 *
 * The whole official spec is supported (interpolation, sections, inverted
 * sections, comments, set delimiters, partials with standalone indentation,
 * inheritance with parents and blocks, dynamic names), plus carteiro's
 * helpers for stores: a pipe inside a variable tag applies filters,
 * `{{ price | brl }}`, `{{ first_name | default: "cliente" }}`, `{{ d | date
 * }}`, `{{ d | date_long }}`, `{{ cart | sum: "price*qty" | brl }}`, `{{ cart
 * | count }}`, `upper`, `lower`, `first_word`. The empty string is falsy,
 * like an empty list.
 *
 * Ownership and threads: a mu_set (named partials) and a mu_tpl are
 * immutable once built; mu_render() only reads them and appends to the
 * caller's buffer, so any number of threads may render the same template
 * at once. A template keeps a pointer to the set it was compiled with: free
 * templates before their set. The escape mode belongs to the top-level
 * template and applies to the partials it uses.
 */
#ifndef CARTEIRO_MUSTACHE_H
#define CARTEIRO_MUSTACHE_H

#include <jansson.h>
#include <stddef.h>

#include "engine/buf.h"

typedef struct mu_set mu_set;
typedef struct mu_tpl mu_tpl;

enum mu_escape { MU_ESCAPE_HTML, MU_ESCAPE_NONE };

#define MU_DEPTH_MAX 64      /* nested sections and partials at render */

mu_set *mu_set_new(void);
/* Compile `src` as partial `name` (replacing one of the same name).
 * Errors: "name:line:column: what was expected". */
int mu_set_add(mu_set *s, const char *name, const char *src, size_t len,
	char *err, size_t errlen);
/* Add every NAME.mustache, NAME.html and NAME.txt of `dir` as partial NAME. */
int mu_set_load_dir(mu_set *s, const char *dir, char *err, size_t errlen);
void mu_set_free(mu_set *s);

/* `partials` may be NULL. `name` is used in error messages. */
mu_tpl *mu_compile(const mu_set *partials, const char *name, const char *src,
	size_t len, enum mu_escape esc, char *err, size_t errlen);
void mu_tpl_free(mu_tpl *t);

/*
 * Render with a stack of root contexts: ctx[0] is searched first, then
 * ctx[1]…  (e.g. {contact, campaign_vars}); NULL entries are skipped.
 * Appends to `out`. Returns 0, or -1 with err (nesting too deep).
 */
int mu_render(const mu_tpl *t, const json_t *const *ctx, size_t nctx,
	buf_t *out, char *err, size_t errlen);

#endif
