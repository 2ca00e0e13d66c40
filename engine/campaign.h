/*
 * campaign — a campaign's definition and its compiled form (prefix camp_).
 *
 * camp_prepare() turns a submitted campaign (docs/protocol.md, "Campaign
 * file") into the stored definition: every field checked, template files
 * read (relative to the submitter's directory) and inlined together with
 * the partials of `templates_dir`, so the stored campaign does not depend on
 * files that may change or vanish later. camp_compile() builds the runtime
 * object from a stored definition (at submission and after a restart):
 * templates compiled once, shared read-only by every render thread.
 *
 * Errors name the field (`subject`, `html_file`, `from`) and, for template
 * syntax, template:line:column.
 */
#ifndef CARTEIRO_CAMPAIGN_H
#define CARTEIRO_CAMPAIGN_H

#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "templates/mustache.h"

enum camp_priority { CAMP_TRANSACTIONAL = 0, CAMP_BULK = 1 };
enum camp_invalid { CAMP_INVALID_REJECT, CAMP_INVALID_SKIP };
enum camp_wa_mode { CAMP_WA_NONE, CAMP_WA_FALLBACK, CAMP_WA_BOTH,
	CAMP_WA_ONLY };

struct camp {
	uint32_t cid;
	_Atomic int refs;
	json_t *def;                /* the stored definition (owned) */
	const char *name;           /* points into def */
	enum camp_priority priority;
	enum camp_invalid on_invalid;
	uint64_t send_at_ms;        /* 0 = now */
	char *from_name, *from_addr;
	char *reply_to;             /* may be NULL */
	const char *unsub_url;      /* may be NULL */
	const char *feedback_id;    /* may be NULL */
	mu_set *partials;
	mu_tpl *subject, *html, *text;   /* html or text may be NULL */
	enum camp_wa_mode wa_mode;
	const char *wa_template;    /* points into def */
	const char *wa_language;
	mu_tpl **wa_params;         /* Mustache, no escaping */
	size_t nwa_params;
};

/*
 * Validate a submitted campaign object and build the definition to store.
 * `base_dir` resolves relative file names (the submitter's working
 * directory). On error returns -1, err says what, where names the field
 * or file:line:column.
 */
int camp_prepare(const json_t *req, const char *base_dir, json_t **def,
	char *err, size_t errlen, char *where, size_t wherelen);

/* Compile a stored definition. Returns NULL with err/where on failure. */
struct camp *camp_compile(uint32_t cid, json_t *def, char *err,
	size_t errlen, char *where, size_t wherelen);
struct camp *camp_ref(struct camp *c);
void camp_unref(struct camp *c);

/* Resolve a contacts path of the definition (absolute after prepare). */
const char *camp_contacts_path(const struct camp *c);

/* "Name <addr>" or "addr" into its parts (both allocated). */
int camp_parse_mailbox(const char *s, char **name, char **addr, char *err,
	size_t errlen);

/* Parse an RFC 3339 time ("2026-11-23T09:00:00-03:00") into ms since the
 * epoch; -1 when malformed. */
int64_t camp_parse_rfc3339(const char *s);

#endif
