/* htab — see htab.h. FNV-1a for strings, a 64-bit mixer for ids. */
#include "engine/htab.h"

#include <stdlib.h>
#include <string.h>

#include "engine/mem.h"

struct ht_slot {
	char *key;      /* NULL = empty; TOMB = deleted */
	void *val;
	uint64_t h;
};

static char tomb_mark;
#define TOMB (&tomb_mark)

uint64_t ht_hash(const void *p, size_t n)
{
	const unsigned char *s = p;
	uint64_t h = 1469598103934665603ULL;
	for (size_t i = 0; i < n; i++) {
		h ^= s[i];
		h *= 1099511628211ULL;
	}
	return h;
}

static uint64_t mix(uint64_t x)
{
	x ^= x >> 33;
	x *= 0xff51afd7ed558ccdULL;
	x ^= x >> 33;
	x *= 0xc4ceb9fe1a85ec53ULL;
	x ^= x >> 33;
	return x;
}

static struct ht_slot *find(const ht_map *m, const char *key, uint64_t h)
{
	if (!m->cap)
		return NULL;
	for (size_t i = h & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		struct ht_slot *s = &m->slots[i];
		if (!s->key)
			return NULL;
		if (s->key != TOMB && s->h == h && strcmp(s->key, key) == 0)
			return s;
	}
}

static void map_grow(ht_map *m)
{
	struct ht_slot *old = m->slots;
	size_t oc = m->cap;
	m->cap = m->len * 2 >= oc / 2 ? (oc ? oc * 2 : 16) : oc;
	if (m->cap < 16)
		m->cap = 16;
	m->slots = mem_calloc(m->cap, sizeof *m->slots);
	m->used = m->len;
	for (size_t i = 0; i < oc; i++) {
		if (!old[i].key || old[i].key == TOMB)
			continue;
		size_t j = old[i].h & (m->cap - 1);
		while (m->slots[j].key)
			j = (j + 1) & (m->cap - 1);
		m->slots[j] = old[i];
	}
	free(old);
}

void *ht_get(const ht_map *m, const char *key)
{
	struct ht_slot *s = find(m, key, ht_hash(key, strlen(key)));
	return s ? s->val : NULL;
}

void ht_put(ht_map *m, const char *key, void *val)
{
	uint64_t h = ht_hash(key, strlen(key));
	struct ht_slot *s = find(m, key, h);
	if (s) {
		s->val = val;
		return;
	}
	if ((m->used + 1) * 10 >= m->cap * 7)
		map_grow(m);
	size_t i = h & (m->cap - 1);
	while (m->slots[i].key && m->slots[i].key != TOMB)
		i = (i + 1) & (m->cap - 1);
	if (!m->slots[i].key)
		m->used++;
	m->slots[i].key = mem_strdup(key);
	m->slots[i].val = val;
	m->slots[i].h = h;
	m->len++;
}

void *ht_del(ht_map *m, const char *key)
{
	struct ht_slot *s = find(m, key, ht_hash(key, strlen(key)));
	if (!s)
		return NULL;
	void *v = s->val;
	free(s->key);
	s->key = TOMB;
	s->val = NULL;
	m->len--;
	return v;
}

bool ht_next(const ht_map *m, size_t *pos, const char **key, void **val)
{
	for (; *pos < m->cap; (*pos)++) {
		struct ht_slot *s = &m->slots[*pos];
		if (s->key && s->key != TOMB) {
			*key = s->key;
			*val = s->val;
			(*pos)++;
			return true;
		}
	}
	return false;
}

void ht_free(ht_map *m)
{
	for (size_t i = 0; i < m->cap; i++)
		if (m->slots[i].key && m->slots[i].key != TOMB)
			free(m->slots[i].key);
	free(m->slots);
	memset(m, 0, sizeof *m);
}

/* ---- id set ---- */

static void set_grow(ht_set *s)
{
	uint64_t *old = s->keys;
	size_t oc = s->cap;
	s->cap = s->len * 2 >= oc / 2 ? (oc ? oc * 2 : 64) : oc;
	if (s->cap < 64)
		s->cap = 64;
	s->keys = mem_calloc(s->cap, sizeof *s->keys);
	s->used = s->len;
	for (size_t i = 0; i < oc; i++) {
		if (!old[i] || old[i] == UINT64_MAX)
			continue;
		size_t j = mix(old[i]) & (s->cap - 1);
		while (s->keys[j])
			j = (j + 1) & (s->cap - 1);
		s->keys[j] = old[i];
	}
	free(old);
}

static size_t set_find(const ht_set *s, uint64_t id, bool *found)
{
	*found = false;
	size_t i = mix(id) & (s->cap - 1);
	for (;; i = (i + 1) & (s->cap - 1)) {
		if (!s->keys[i])
			return i;
		if (s->keys[i] == id) {
			*found = true;
			return i;
		}
	}
}

bool ht_set_add(ht_set *s, uint64_t id)
{
	bool found;
	if ((s->used + 1) * 10 >= s->cap * 7)
		set_grow(s);
	set_find(s, id, &found);
	if (found)
		return false;
	size_t i = mix(id) & (s->cap - 1);
	while (s->keys[i] && s->keys[i] != UINT64_MAX)
		i = (i + 1) & (s->cap - 1);
	if (!s->keys[i])
		s->used++;
	s->keys[i] = id;
	s->len++;
	return true;
}

bool ht_set_has(const ht_set *s, uint64_t id)
{
	bool found;
	if (!s->cap)
		return false;
	set_find(s, id, &found);
	return found;
}

bool ht_set_del(ht_set *s, uint64_t id)
{
	bool found;
	if (!s->cap)
		return false;
	size_t i = set_find(s, id, &found);
	if (!found)
		return false;
	s->keys[i] = UINT64_MAX;
	s->len--;
	return true;
}

void ht_set_free(ht_set *s)
{
	free(s->keys);
	memset(s, 0, sizeof *s);
}
