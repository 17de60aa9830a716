/* template.c - a Jinja2 subset for chat templates (see template.h).
 *
 * Three stages: the lexer turns the template into text and tag tokens, applying
 * whitespace control ({%- -%}, trim_blocks, lstrip_blocks) to the text; a
 * recursive-descent parser builds statement and expression trees with Jinja2's
 * precedence; the renderer walks them. Every allocation of a render comes from
 * one arena, freed at the end, so values are never reference-counted. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <jansson.h>
#include <math.h>
#include <setjmp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/error.h"
#include "text/template.h"

/* Limits: a template travels inside packs and tokenizer_config.json files from
 * strangers, so a render is bounded in memory (arena bytes: values and output), in
 * time (steps: expressions evaluated and loop turns), in nesting (parser and
 * evaluator recursion, printing and comparing nested values) and in integers
 * (64 bits; where Python would grow a big integer, the render fails instead). */
#define TMPL_MAX_BYTES (64u << 20)
#define TMPL_MAX_STEPS 10000000ul
#define TMPL_MAX_DEPTH 200

/* ---- arena ---- */

struct chunk {
	struct chunk *next;
	size_t used, cap;
	max_align_t data[];
};

struct ctx; /* the render: arena, error exit, output */
static void *alloc(struct ctx *c, size_t n);

/* ---- values ---- */

enum vtype { V_UNDEF, V_NONE, V_BOOL, V_INT, V_FLOAT, V_STR, V_LIST, V_DICT, V_FUNC };

struct value {
	enum vtype t;
	union {
		int b;
		long long i;
		double f;
		struct {
			const char *s;
			size_t n;
		} str;
		struct list *l;
		struct dict *d;
		struct func *fn;
	};
};

struct list {
	size_t n, cap;
	struct value *v;
};

struct dict { /* insertion-ordered; small, so looked up linearly */
	size_t n, cap;
	struct value *k, *v;
};

struct func {
	const char *name; /* a global function, or a method of self */
	struct value self;
	int method;
	struct stmt *macro;  /* a {% macro %}: its definition, */
	struct scope *scope; /* and the scope it was defined in (what its body sees besides its arguments) */
};

/* ---- tokens ---- */

enum tok {
	T_EOF, T_TEXT, T_VAR_BEGIN, T_VAR_END, T_BLOCK_BEGIN, T_BLOCK_END,
	T_NAME, T_STRING, T_INT, T_FLOAT, T_OP,
};

struct token {
	enum tok t;
	int line;
	const char *s; /* text, name, string contents (unescaped), operator */
	size_t n;
	long long i;
	double f;
};

/* ---- syntax trees ---- */

enum ekind {
	E_LIT, E_NAME, E_LIST, E_DICT, E_ATTR, E_ITEM, E_SLICE, E_CALL, E_FILTER, E_TEST,
	E_NOT, E_NEG, E_BIN, E_AND, E_OR, E_COND,
};

struct expr {
	enum ekind k;
	int line, negate;
	char op[3];
	const char *name; /* E_NAME, E_ATTR, E_FILTER, E_TEST */
	struct value lit;
	struct expr *a, *b, *c;
	struct expr **args; /* E_CALL/E_FILTER/E_TEST arguments; E_LIST items; E_DICT keys and values */
	const char **kw;    /* keyword names (NULL for positional) */
	size_t nargs;
};

enum skind { S_TEXT, S_OUT, S_IF, S_FOR, S_SET, S_MACRO };

struct stmt {
	enum skind k;
	int line;
	struct stmt *next;
	const char *text; /* S_TEXT */
	size_t n;
	struct expr *e;            /* S_OUT value, S_IF condition, S_FOR iterable, S_SET value */
	struct expr *filter;       /* S_FOR ... if filter */
	struct stmt *body, *orelse; /* S_IF then/else (elif is a nested S_IF), S_FOR body/else */
	const char *targets[4];    /* S_FOR loop variables, S_SET and S_MACRO name */
	size_t n_targets;
	const char *attr;          /* S_SET ns.attr */
	const char **params;       /* S_MACRO parameters, */
	struct expr **defaults;    /* their defaults (NULL: none) */
	size_t n_params;
};

/* ---- the render ---- */

struct scope {
	struct dict *vars;
	struct scope *up;
};

struct ctx {
	struct chunk *arena;
	jmp_buf fail;
	char err[256];
	struct token *toks;
	size_t n_toks, cap_toks, at;
	char *out;
	size_t out_n, out_cap;
	int out_err;
	size_t arena_bytes;
	unsigned long steps;
	int depth, line; /* recursion depth now; the template line being run */
};

__attribute__((format(printf, 3, 4), noreturn)) static void fail(struct ctx *c, int line, const char *fmt, ...);

static void *alloc(struct ctx *c, size_t n)
{
	if (n > TMPL_MAX_BYTES || (c->arena_bytes += n) > TMPL_MAX_BYTES)
		fail(c, c->line, "the template needs more than %u MB (its output or its values)", TMPL_MAX_BYTES >> 20);
	n = (n + sizeof(max_align_t) - 1) / sizeof(max_align_t) * sizeof(max_align_t);
	if (!c->arena || c->arena->used + n > c->arena->cap) {
		size_t cap = n > 65536 ? n : 65536;
		struct chunk *k = malloc(sizeof *k + cap);
		if (!k) {
			snprintf(c->err, sizeof c->err, "out of memory");
			longjmp(c->fail, 1);
		}
		k->next = c->arena, k->used = 0, k->cap = cap;
		c->arena = k;
	}
	void *p = (char *)c->arena->data + c->arena->used;
	c->arena->used += n;
	memset(p, 0, n);
	return p;
}

static void fail(struct ctx *c, int line, const char *fmt, ...)
{
	va_list ap;
	int k = snprintf(c->err, sizeof c->err, "line %d: ", line);
	va_start(ap, fmt);
	vsnprintf(c->err + k, sizeof c->err - (size_t)k, fmt, ap);
	va_end(ap);
	longjmp(c->fail, 1);
}

/* one level deeper into the parser or the evaluator; leave() on the way out (a
 * failure longjmps past both, so the count need not be unwound) */
static void enter(struct ctx *c, int line)
{
	if (++c->depth > TMPL_MAX_DEPTH)
		fail(c, line, "nested more than %d deep", TMPL_MAX_DEPTH);
}
static void leave(struct ctx *c) { c->depth--; }

static char *dup_n(struct ctx *c, const char *s, size_t n)
{
	char *d = alloc(c, n + 1);
	memcpy(d, s, n);
	return d;
}

/* ---- value helpers ---- */

static struct value v_str(const char *s, size_t n) { return (struct value){.t = V_STR, .str = {s, n}}; }
static struct value v_int(long long i) { return (struct value){.t = V_INT, .i = i}; }
static struct value v_bool(int b) { return (struct value){.t = V_BOOL, .b = !!b}; }
static struct value v_none(void) { return (struct value){.t = V_NONE}; }
static struct value v_undef(void) { return (struct value){.t = V_UNDEF}; }

static struct list *list_new(struct ctx *c) { return alloc(c, sizeof(struct list)); }

static void list_push(struct ctx *c, struct list *l, struct value v)
{
	if (l->n == l->cap) {
		size_t cap = l->cap ? 2 * l->cap : 8;
		struct value *nv = alloc(c, cap * sizeof *nv);
		if (l->n)
			memcpy(nv, l->v, l->n * sizeof *nv);
		l->v = nv, l->cap = cap;
	}
	l->v[l->n++] = v;
}

static int str_eq(struct value a, const char *s, size_t n) { return a.t == V_STR && a.str.n == n && !memcmp(a.str.s, s, n); }

static struct value *dict_find(struct dict *d, const char *k, size_t n)
{
	for (size_t i = 0; i < d->n; i++)
		if (str_eq(d->k[i], k, n))
			return &d->v[i];
	return NULL;
}

static void dict_set(struct ctx *c, struct dict *d, const char *k, size_t n, struct value v)
{
	struct value *old = dict_find(d, k, n);
	if (old) {
		*old = v;
		return;
	}
	if (d->n == d->cap) {
		size_t cap = d->cap ? 2 * d->cap : 8;
		struct value *nk = alloc(c, cap * sizeof *nk), *nv = alloc(c, cap * sizeof *nv);
		if (d->n) {
			memcpy(nk, d->k, d->n * sizeof *nk);
			memcpy(nv, d->v, d->n * sizeof *nv);
		}
		d->k = nk, d->v = nv, d->cap = cap;
	}
	d->k[d->n] = v_str(k, n);
	d->v[d->n++] = v;
}

static int truthy(struct value v)
{
	switch (v.t) {
	case V_UNDEF: case V_NONE: return 0;
	case V_BOOL: return v.b;
	case V_INT: return v.i != 0;
	case V_FLOAT: return v.f != 0.0;
	case V_STR: return v.str.n != 0;
	case V_LIST: return v.l->n != 0;
	case V_DICT: return v.d->n != 0;
	case V_FUNC: return 1;
	}
	return 0;
}

static const char *type_name(struct value v)
{
	static const char *names[] = {"undefined", "none", "bool", "int", "float", "string", "list", "dict", "function"};
	return names[v.t];
}

static int equal(struct ctx *c, struct value a, struct value b)
{
	if ((a.t == V_INT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_BOOL)) /* exactly, as Python */
		return (a.t == V_INT ? a.i : a.b) == (b.t == V_INT ? b.i : b.b);
	if ((a.t == V_INT || a.t == V_FLOAT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_FLOAT || b.t == V_BOOL)) {
		double x = a.t == V_INT ? (double)a.i : a.t == V_FLOAT ? a.f : a.b;
		double y = b.t == V_INT ? (double)b.i : b.t == V_FLOAT ? b.f : b.b;
		return x == y;
	}
	if (a.t != b.t)
		return 0;
	switch (a.t) {
	case V_UNDEF: case V_NONE: return 1;
	case V_STR: return a.str.n == b.str.n && !memcmp(a.str.s, b.str.s, a.str.n);
	case V_LIST:
		if (a.l->n != b.l->n)
			return 0;
		enter(c, c->line);
		for (size_t i = 0; i < a.l->n; i++)
			if (!equal(c, a.l->v[i], b.l->v[i]))
				return leave(c), 0;
		return leave(c), 1;
	case V_DICT:
		if (a.d->n != b.d->n)
			return 0;
		enter(c, c->line);
		for (size_t i = 0; i < a.d->n; i++) {
			struct value *o = dict_find(b.d, a.d->k[i].str.s, a.d->k[i].str.n);
			if (!o || !equal(c, a.d->v[i], *o))
				return leave(c), 0;
		}
		return leave(c), 1;
	default: return a.fn == b.fn;
	}
}

/* ---- output buffer (also used to build strings) ---- */

struct sbuf {
	struct ctx *c;
	char *p;
	size_t n, cap;
};

static void sb_put(struct sbuf *b, const char *s, size_t n)
{
	if (b->n + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 64;
		while (cap < b->n + n + 1)
			cap *= 2;
		char *np = alloc(b->c, cap);
		if (b->n)
			memcpy(np, b->p, b->n);
		b->p = np, b->cap = cap;
	}
	memcpy(b->p + b->n, s, n);
	b->n += n;
	b->p[b->n] = '\0';
}

static void sb_puts(struct sbuf *b, const char *s) { sb_put(b, s, strlen(s)); }

static void json_string_out(struct sbuf *b, const char *s, size_t n)
{
	sb_put(b, "\"", 1);
	for (size_t i = 0; i < n; i++) {
		const unsigned char ch = (unsigned char)s[i];
		char esc[8];
		switch (ch) {
		case '"': sb_puts(b, "\\\""); break;
		case '\\': sb_puts(b, "\\\\"); break;
		case '\n': sb_puts(b, "\\n"); break;
		case '\r': sb_puts(b, "\\r"); break;
		case '\t': sb_puts(b, "\\t"); break;
		case '\b': sb_puts(b, "\\b"); break;
		case '\f': sb_puts(b, "\\f"); break;
		default:
			if (ch < 0x20) {
				snprintf(esc, sizeof esc, "\\u%04x", ch);
				sb_puts(b, esc);
			} else {
				sb_put(b, (const char *)&ch, 1);
			}
		}
	}
	sb_put(b, "\"", 1);
}

static void format_float(double f, char *buf, size_t n)
{
	/* Python's repr: the shortest form that reads back the same */
	for (int prec = 1; prec <= 17; prec++) {
		snprintf(buf, n, "%.*g", prec, f);
		if (strtod(buf, NULL) == f)
			break;
	}
	if (!strpbrk(buf, ".eEn")) /* 1.0, not 1 */
		strncat(buf, ".0", n - strlen(buf) - 1);
}

/* json.dumps(v, ensure_ascii=False, indent=indent): ", " and ": " without indent */
static void to_json(struct ctx *c, struct sbuf *b, struct value v, int indent, int depth, int line)
{
	char num[64];
	switch (v.t) {
	case V_UNDEF: case V_NONE: sb_puts(b, "null"); return;
	case V_BOOL: sb_puts(b, v.b ? "true" : "false"); return;
	case V_INT: snprintf(num, sizeof num, "%lld", v.i); sb_puts(b, num); return;
	case V_FLOAT: format_float(v.f, num, sizeof num); sb_puts(b, num); return;
	case V_STR: json_string_out(b, v.str.s, v.str.n); return;
	case V_FUNC: fail(c, line, "tojson: a function is not JSON");
	case V_LIST: case V_DICT: break;
	}
	const size_t n = v.t == V_LIST ? v.l->n : v.d->n;
	if (depth > TMPL_MAX_DEPTH)
		fail(c, line, "tojson: a value nested more than %d deep", TMPL_MAX_DEPTH);
	sb_puts(b, v.t == V_LIST ? "[" : "{");
	for (size_t i = 0; i < n; i++) {
		if (i)
			sb_puts(b, indent >= 0 ? "," : ", ");
		if (indent >= 0) {
			sb_puts(b, "\n");
			for (int k = 0; k < indent * (depth + 1); k++)
				sb_puts(b, " ");
		}
		if (v.t == V_DICT) {
			json_string_out(b, v.d->k[i].str.s, v.d->k[i].str.n);
			sb_puts(b, ": ");
		}
		to_json(c, b, v.t == V_LIST ? v.l->v[i] : v.d->v[i], indent, depth + 1, line);
	}
	if (indent >= 0 && n) {
		sb_puts(b, "\n");
		for (int k = 0; k < indent * depth; k++)
			sb_puts(b, " ");
	}
	sb_puts(b, v.t == V_LIST ? "]" : "}");
}

/* str(v) as Jinja2 prints it */
static void to_text(struct ctx *c, struct sbuf *b, struct value v, int line)
{
	char num[64];
	switch (v.t) {
	case V_UNDEF: return;
	case V_NONE: sb_puts(b, "None"); return;
	case V_BOOL: sb_puts(b, v.b ? "True" : "False"); return;
	case V_INT: snprintf(num, sizeof num, "%lld", v.i); sb_puts(b, num); return;
	case V_FLOAT: format_float(v.f, num, sizeof num); sb_puts(b, num); return;
	case V_STR: sb_put(b, v.str.s, v.str.n); return;
	case V_LIST: case V_DICT: {
		/* Python's repr, close enough for templates that print a structure */
		const size_t n = v.t == V_LIST ? v.l->n : v.d->n;
		enter(c, line);
		sb_puts(b, v.t == V_LIST ? "[" : "{");
		for (size_t i = 0; i < n; i++) {
			struct value x = v.t == V_LIST ? v.l->v[i] : v.d->v[i];
			if (i)
				sb_puts(b, ", ");
			if (v.t == V_DICT) {
				sb_puts(b, "'");
				sb_put(b, v.d->k[i].str.s, v.d->k[i].str.n);
				sb_puts(b, "': ");
			}
			if (x.t == V_STR) {
				sb_puts(b, "'");
				sb_put(b, x.str.s, x.str.n);
				sb_puts(b, "'");
			} else {
				to_text(c, b, x, line);
			}
		}
		sb_puts(b, v.t == V_LIST ? "]" : "}");
		leave(c);
		return;
	}
	case V_FUNC: fail(c, line, "cannot print a function");
	}
}

static struct value from_json(struct ctx *c, json_t *j)
{
	switch (json_typeof(j)) {
	case JSON_OBJECT: {
		struct value v = {.t = V_DICT, .d = alloc(c, sizeof(struct dict))};
		const char *k;
		json_t *x;
		json_object_foreach(j, k, x)
			dict_set(c, v.d, dup_n(c, k, strlen(k)), strlen(k), from_json(c, x));
		return v;
	}
	case JSON_ARRAY: {
		struct value v = {.t = V_LIST, .l = list_new(c)};
		size_t i;
		json_t *x;
		json_array_foreach(j, i, x)
			list_push(c, v.l, from_json(c, x));
		return v;
	}
	case JSON_STRING: return v_str(dup_n(c, json_string_value(j), json_string_length(j)), json_string_length(j));
	case JSON_INTEGER: return v_int(json_integer_value(j));
	case JSON_REAL: return (struct value){.t = V_FLOAT, .f = json_real_value(j)};
	case JSON_TRUE: return v_bool(1);
	case JSON_FALSE: return v_bool(0);
	default: return v_none();
	}
}

/* ---- lexer ---- */

static void emit(struct ctx *c, struct token t)
{
	if (c->n_toks == c->cap_toks) {
		size_t cap = c->cap_toks ? 2 * c->cap_toks : 256;
		struct token *nt = alloc(c, cap * sizeof *nt);
		if (c->n_toks)
			memcpy(nt, c->toks, c->n_toks * sizeof *nt);
		c->toks = nt, c->cap_toks = cap;
	}
	c->toks[c->n_toks++] = t;
}

static int count_lines(const char *s, const char *e, int line)
{
	for (; s < e; s++)
		line += *s == '\n';
	return line;
}

/* Tokens of one tag's inside, up to its closer; returns the position after it. */
static const char *lex_tag(struct ctx *c, const char *p, const char *end, char closer, int *line, int *strip_after)
{
	for (;;) {
		while (p < end && isspace((unsigned char)*p))
			*line += *p++ == '\n';
		if (p >= end)
			fail(c, *line, "unterminated tag");
		if ((*p == '-' || *p == '+') && p + 2 < end && p[1] == closer && p[2] == '}') {
			*strip_after = *p == '-';
			return p + 3;
		}
		if (*p == closer && p + 1 < end && p[1] == '}') {
			*strip_after = 0;
			return p + 2;
		}
		struct token t = {.line = *line};
		if (isalpha((unsigned char)*p) || *p == '_') {
			const char *s = p;
			while (p < end && (isalnum((unsigned char)*p) || *p == '_'))
				p++;
			t.t = T_NAME, t.s = s, t.n = (size_t)(p - s);
		} else if (isdigit((unsigned char)*p)) {
			char *e;
			const char *s = p;
			while (p < end && (isdigit((unsigned char)*p) || *p == '_'))
				p++;
			if (p < end && *p == '.' && p + 1 < end && isdigit((unsigned char)p[1])) {
				t.t = T_FLOAT, t.f = strtod(s, &e), p = e;
			} else {
				errno = 0;
				t.t = T_INT, t.i = strtoll(s, &e, 10), p = e;
				if (errno == ERANGE)
					fail(c, *line, "integer %.*s does not fit in 64 bits", (int)(p - s < 40 ? p - s : 40), s);
			}
		} else if (*p == '\'' || *p == '"') {
			const char q = *p++;
			struct sbuf b = {c, NULL, 0, 0};
			sb_put(&b, "", 0);
			while (p < end && *p != q) {
				char ch = *p++;
				if (ch == '\\' && p < end) {
					ch = *p++;
					ch = ch == 'n' ? '\n' : ch == 't' ? '\t' : ch == 'r' ? '\r' : ch == '0' ? '\0' : ch;
				}
				*line += ch == '\n';
				sb_put(&b, &ch, 1);
			}
			if (p >= end)
				fail(c, t.line, "unterminated string");
			p++;
			t.t = T_STRING, t.s = b.p, t.n = b.n;
		} else {
			static const char *ops[] = {"**", "//", "==", "!=", "<=", ">=", "(", ")", "[", "]", "{", "}", ".", ",",
						    ":", "|", "~", "+", "-", "*", "/", "%", "<", ">", "="};
			size_t k = 0;
			for (; k < sizeof ops / sizeof *ops; k++)
				if (!strncmp(p, ops[k], strlen(ops[k])) && p + strlen(ops[k]) <= end)
					break;
			if (k == sizeof ops / sizeof *ops)
				fail(c, *line, "unexpected character '%c'", *p);
			t.t = T_OP, t.s = ops[k], t.n = strlen(ops[k]);
			p += t.n;
		}
		emit(c, t);
	}
}

/* transformers renders with trim_blocks and lstrip_blocks */
static void lex(struct ctx *c, const char *src, size_t len)
{
	const char *p = src, *end = src + len;
	int line = 1, strip_next = 0, trim_nl = 0;
	while (p < end) {
		const char *open = p;
		while (open + 1 < end && !(open[0] == '{' && (open[1] == '{' || open[1] == '%' || open[1] == '#')))
			open++;
		if (open + 1 >= end)
			open = end;
		const char *ts = p, *te = open;
		if (strip_next)
			while (ts < te && isspace((unsigned char)*ts))
				ts++;
		else if (trim_nl && ts < te && *ts == '\n')
			ts++;
		else if (trim_nl && te - ts >= 2 && ts[0] == '\r' && ts[1] == '\n')
			ts += 2;
		const char kind = open < end ? open[1] : 0;
		const int minus = open + 2 < end && open[2] == '-', plus = open + 2 < end && open[2] == '+';
		if (minus) {
			while (te > ts && isspace((unsigned char)te[-1]))
				te--;
		} else if ((kind == '%' || kind == '#') && !plus) {
			/* lstrip_blocks: spaces and tabs before a tag that starts its line */
			const char *q = open;
			while (q > p && (q[-1] == ' ' || q[-1] == '\t'))
				q--;
			if (q == src || q[-1] == '\n')
				te = q > ts ? q : ts;
		}
		if (te > ts)
			emit(c, (struct token){.t = T_TEXT, .line = line, .s = ts, .n = (size_t)(te - ts)});
		line = count_lines(p, open, line);
		if (open >= end)
			break;
		p = open + 2 + (minus || plus);
		int strip_after = 0;
		if (kind == '#') {
			const char *q = p;
			while (q + 1 < end && !(q[0] == '#' && q[1] == '}'))
				q++;
			if (q + 1 >= end)
				fail(c, line, "unterminated comment");
			strip_after = q > p && q[-1] == '-';
			line = count_lines(p, q, line);
			p = q + 2;
		} else {
			emit(c, (struct token){.t = kind == '{' ? T_VAR_BEGIN : T_BLOCK_BEGIN, .line = line});
			p = lex_tag(c, p, end, kind == '{' ? '}' : '%', &line, &strip_after);
			emit(c, (struct token){.t = kind == '{' ? T_VAR_END : T_BLOCK_END, .line = line});
		}
		strip_next = strip_after;
		trim_nl = kind != '{';
	}
	emit(c, (struct token){.t = T_EOF, .line = line});
}

/* ---- parser ---- */

static struct token *peek(struct ctx *c) { return &c->toks[c->at]; }
static struct token *next(struct ctx *c) { return &c->toks[c->at < c->n_toks - 1 ? c->at++ : c->at]; }

static int is_op(struct token *t, const char *op) { return t->t == T_OP && strlen(op) == t->n && !memcmp(t->s, op, t->n); }
static int is_name(struct token *t, const char *name)
{
	return t->t == T_NAME && strlen(name) == t->n && !memcmp(t->s, name, t->n);
}

static void expect_op(struct ctx *c, const char *op)
{
	struct token *t = next(c);
	if (!is_op(t, op))
		fail(c, t->line, "expected '%s'", op);
}

static const char *expect_name(struct ctx *c)
{
	struct token *t = next(c);
	if (t->t != T_NAME)
		fail(c, t->line, "expected a name");
	return dup_n(c, t->s, t->n);
}

static struct expr *new_expr(struct ctx *c, enum ekind k, int line)
{
	struct expr *e = alloc(c, sizeof *e);
	e->k = k, e->line = line;
	return e;
}

static struct expr *parse_expr(struct ctx *c);

/* (args) after a call or a filter/test name: positional and name=value */
static void parse_args(struct ctx *c, struct expr *e)
{
	struct expr *args[32];
	const char *kw[32];
	size_t n = 0;
	expect_op(c, "(");
	while (!is_op(peek(c), ")")) {
		if (n == 32)
			fail(c, peek(c)->line, "too many arguments");
		kw[n] = NULL;
		if (peek(c)->t == T_NAME && is_op(&c->toks[c->at + 1], "=")) {
			kw[n] = expect_name(c);
			next(c);
		}
		args[n++] = parse_expr(c);
		if (!is_op(peek(c), ","))
			break;
		next(c);
	}
	expect_op(c, ")");
	e->args = alloc(c, (n + 1) * sizeof *e->args);
	e->kw = alloc(c, (n + 1) * sizeof *e->kw);
	memcpy(e->args, args, n * sizeof *args);
	memcpy(e->kw, kw, n * sizeof *kw);
	e->nargs = n;
}

static struct expr *parse_primary(struct ctx *c)
{
	struct token *t = next(c);
	struct expr *e = new_expr(c, E_LIT, t->line);
	switch (t->t) {
	case T_STRING: e->lit = v_str(t->s, t->n);
		while (peek(c)->t == T_STRING) { /* adjacent literals concatenate */
			struct token *u = next(c);
			char *s = alloc(c, e->lit.str.n + u->n + 1);
			memcpy(s, e->lit.str.s, e->lit.str.n);
			memcpy(s + e->lit.str.n, u->s, u->n);
			e->lit = v_str(s, e->lit.str.n + u->n);
		}
		return e;
	case T_INT: e->lit = v_int(t->i); return e;
	case T_FLOAT: e->lit = (struct value){.t = V_FLOAT, .f = t->f}; return e;
	case T_NAME:
		if (is_name(t, "true") || is_name(t, "True"))
			e->lit = v_bool(1);
		else if (is_name(t, "false") || is_name(t, "False"))
			e->lit = v_bool(0);
		else if (is_name(t, "none") || is_name(t, "None"))
			e->lit = v_none();
		else
			e->k = E_NAME, e->name = dup_n(c, t->s, t->n);
		return e;
	case T_OP:
		if (is_op(t, "(")) {
			struct expr *inner = parse_expr(c);
			if (is_op(peek(c), ",")) { /* a tuple: a list will do */
				e->k = E_LIST;
				struct expr *items[64];
				size_t n = 0;
				items[n++] = inner;
				while (is_op(peek(c), ",") && n < 64) {
					next(c);
					if (is_op(peek(c), ")"))
						break;
					items[n++] = parse_expr(c);
				}
				e->args = alloc(c, n * sizeof *items);
				memcpy(e->args, items, n * sizeof *items);
				e->nargs = n;
				inner = e;
			}
			expect_op(c, ")");
			return inner;
		}
		if (is_op(t, "[") || is_op(t, "{")) {
			const int dict = is_op(t, "{");
			e->k = dict ? E_DICT : E_LIST;
			struct expr *items[256];
			size_t n = 0;
			while (!is_op(peek(c), dict ? "}" : "]")) {
				if (n + 2 > 256)
					fail(c, t->line, "literal too long");
				items[n++] = parse_expr(c);
				if (dict) {
					expect_op(c, ":");
					items[n++] = parse_expr(c);
				}
				if (!is_op(peek(c), ","))
					break;
				next(c);
			}
			expect_op(c, dict ? "}" : "]");
			e->args = alloc(c, (n + 1) * sizeof *e->args);
			memcpy(e->args, items, n * sizeof *items);
			e->nargs = n;
			return e;
		}
		/* fall through */
	default: fail(c, t->line, "unexpected '%.*s'", (int)(t->n ? t->n : 3), t->n ? t->s : "end");
	}
}

static struct expr *parse_postfix(struct ctx *c, struct expr *e)
{
	for (;;) {
		struct token *t = peek(c);
		if (is_op(t, ".")) {
			next(c);
			struct expr *a = new_expr(c, E_ATTR, t->line);
			a->a = e, a->name = expect_name(c);
			e = a;
		} else if (is_op(t, "[")) {
			next(c);
			struct expr *lo = NULL, *hi = NULL, *step = NULL;
			int slice = 0;
			if (!is_op(peek(c), ":"))
				lo = parse_expr(c);
			if (is_op(peek(c), ":")) {
				slice = 1;
				next(c);
				if (!is_op(peek(c), ":") && !is_op(peek(c), "]"))
					hi = parse_expr(c);
				if (is_op(peek(c), ":")) {
					next(c);
					if (!is_op(peek(c), "]"))
						step = parse_expr(c);
				}
			}
			expect_op(c, "]");
			struct expr *x = new_expr(c, slice ? E_SLICE : E_ITEM, t->line);
			x->a = e, x->b = lo, x->c = hi;
			x->args = alloc(c, sizeof *x->args);
			x->args[0] = step;
			e = x;
		} else if (is_op(t, "(")) {
			struct expr *x = new_expr(c, E_CALL, t->line);
			x->a = e;
			parse_args(c, x);
			e = x;
		} else {
			return e;
		}
	}
}

/* filters and tests bind to the operand before any operator (Jinja2's parse_unary) */
static struct expr *parse_filters(struct ctx *c, struct expr *e)
{
	for (;;) {
		struct token *t = peek(c);
		if (is_op(t, "|")) {
			next(c);
			struct expr *f = new_expr(c, E_FILTER, t->line);
			f->a = e, f->name = expect_name(c);
			if (is_op(peek(c), "("))
				parse_args(c, f);
			e = parse_postfix(c, f);
		} else if (is_name(t, "is")) {
			next(c);
			struct expr *f = new_expr(c, E_TEST, t->line);
			f->a = e;
			if (is_name(peek(c), "not")) {
				next(c);
				f->negate = 1;
			}
			struct token *n = next(c);
			if (n->t != T_NAME)
				fail(c, n->line, "expected a test name after 'is'");
			f->name = dup_n(c, n->s, n->n);
			if (is_op(peek(c), "("))
				parse_args(c, f);
			e = f;
		} else {
			return e;
		}
	}
}

static struct expr *parse_unary(struct ctx *c)
{
	struct token *t = peek(c);
	struct expr *e;
	enter(c, t->line);
	if (is_op(t, "-") || is_op(t, "+")) {
		next(c);
		e = new_expr(c, E_NEG, t->line);
		e->a = parse_unary(c);
		e->negate = is_op(t, "-");
	} else {
		e = parse_filters(c, parse_postfix(c, parse_primary(c)));
	}
	leave(c);
	return e;
}

static struct expr *binary(struct ctx *c, const char *op, struct expr *a, struct expr *b, int line)
{
	struct expr *e = new_expr(c, E_BIN, line);
	snprintf(e->op, sizeof e->op, "%s", op);
	e->a = a, e->b = b;
	return e;
}

static struct expr *parse_pow(struct ctx *c)
{
	struct expr *e = parse_unary(c);
	while (is_op(peek(c), "**")) {
		int line = next(c)->line;
		e = binary(c, "**", e, parse_unary(c), line);
	}
	return e;
}

static struct expr *parse_mul(struct ctx *c)
{
	struct expr *e = parse_pow(c);
	for (;;) {
		struct token *t = peek(c);
		if (!is_op(t, "*") && !is_op(t, "/") && !is_op(t, "//") && !is_op(t, "%"))
			return e;
		next(c);
		char op[3] = {0};
		memcpy(op, t->s, t->n);
		e = binary(c, op, e, parse_pow(c), t->line);
	}
}

static struct expr *parse_concat(struct ctx *c)
{
	struct expr *e = parse_mul(c);
	while (is_op(peek(c), "~")) {
		int line = next(c)->line;
		e = binary(c, "~", e, parse_mul(c), line);
	}
	return e;
}

static struct expr *parse_add(struct ctx *c)
{
	struct expr *e = parse_concat(c);
	for (;;) {
		struct token *t = peek(c);
		if (!is_op(t, "+") && !is_op(t, "-"))
			return e;
		next(c);
		e = binary(c, is_op(t, "+") ? "+" : "-", e, parse_concat(c), t->line);
	}
}

static struct expr *parse_compare(struct ctx *c)
{
	struct expr *e = parse_add(c);
	for (;;) {
		struct token *t = peek(c);
		static const char *ops[] = {"==", "!=", "<", ">", "<=", ">="};
		const char *op = NULL;
		for (size_t i = 0; i < 6; i++)
			if (is_op(t, ops[i]))
				op = ops[i];
		if (op) {
			next(c);
			e = binary(c, op, e, parse_add(c), t->line);
		} else if (is_name(t, "in")) {
			next(c);
			e = binary(c, "in", e, parse_add(c), t->line);
		} else if (is_name(t, "not") && is_name(&c->toks[c->at + 1], "in")) {
			next(c), next(c);
			e = binary(c, "ni", e, parse_add(c), t->line); /* not in */
		} else {
			return e;
		}
	}
}

static struct expr *parse_not(struct ctx *c)
{
	struct expr *e;
	enter(c, peek(c)->line);
	if (is_name(peek(c), "not")) {
		e = new_expr(c, E_NOT, next(c)->line);
		e->a = parse_not(c);
	} else {
		e = parse_compare(c);
	}
	leave(c);
	return e;
}

static struct expr *parse_and(struct ctx *c)
{
	struct expr *e = parse_not(c);
	while (is_name(peek(c), "and")) {
		struct expr *x = new_expr(c, E_AND, next(c)->line);
		x->a = e, x->b = parse_not(c);
		e = x;
	}
	return e;
}

static struct expr *parse_or(struct ctx *c)
{
	struct expr *e = parse_and(c);
	while (is_name(peek(c), "or")) {
		struct expr *x = new_expr(c, E_OR, next(c)->line);
		x->a = e, x->b = parse_and(c);
		e = x;
	}
	return e;
}

static struct expr *parse_expr(struct ctx *c)
{
	enter(c, peek(c)->line);
	struct expr *e = parse_or(c);
	if (is_name(peek(c), "if")) { /* a if cond else b */
		struct expr *x = new_expr(c, E_COND, next(c)->line);
		x->a = e, x->b = parse_or(c);
		if (is_name(peek(c), "else")) {
			next(c);
			x->c = parse_expr(c);
		}
		e = x;
	}
	leave(c);
	return e;
}

static void expect_block_end(struct ctx *c)
{
	struct token *t = next(c);
	if (t->t != T_BLOCK_END)
		fail(c, t->line, "expected the end of the tag");
}

/* statements until one of the end keywords (returned in *stop; NULL at T_EOF) */
static struct stmt *parse_body(struct ctx *c, const char *const *ends, const char **stop);

static struct stmt *parse_if(struct ctx *c, int line)
{
	static const char *const ends[] = {"elif", "else", "endif", NULL};
	struct stmt *s = alloc(c, sizeof *s);
	s->k = S_IF, s->line = line;
	s->e = parse_expr(c);
	expect_block_end(c);
	const char *stop;
	s->body = parse_body(c, ends, &stop);
	if (!stop)
		fail(c, line, "'if' without 'endif'");
	if (!strcmp(stop, "elif")) {
		s->orelse = parse_if(c, peek(c)->line);
		return s; /* the nested if consumed the endif */
	}
	if (!strcmp(stop, "else")) {
		static const char *const endif[] = {"endif", NULL};
		expect_block_end(c);
		s->orelse = parse_body(c, endif, &stop);
		if (!stop)
			fail(c, line, "'else' without 'endif'");
	}
	expect_block_end(c);
	return s;
}

static struct stmt *parse_for(struct ctx *c, int line)
{
	static const char *const ends[] = {"else", "endfor", NULL};
	struct stmt *s = alloc(c, sizeof *s);
	s->k = S_FOR, s->line = line;
	do {
		if (s->n_targets == 4)
			fail(c, line, "too many loop variables");
		s->targets[s->n_targets++] = expect_name(c);
	} while (is_op(peek(c), ",") && next(c));
	if (!is_name(next(c), "in"))
		fail(c, line, "expected 'in'");
	s->e = parse_or(c); /* "if" here filters, it is not a conditional expression */
	if (is_name(peek(c), "if")) {
		next(c);
		s->filter = parse_expr(c);
	}
	expect_block_end(c);
	const char *stop;
	s->body = parse_body(c, ends, &stop);
	if (stop && !strcmp(stop, "else")) {
		static const char *const endfor[] = {"endfor", NULL};
		expect_block_end(c);
		s->orelse = parse_body(c, endfor, &stop);
	}
	if (!stop)
		fail(c, line, "'for' without 'endfor'");
	expect_block_end(c);
	return s;
}

/* {% macro name(a, b=default, ...) %}body{% endmacro %} */
static struct stmt *parse_macro(struct ctx *c, int line)
{
	static const char *const ends[] = {"endmacro", NULL};
	struct stmt *s = alloc(c, sizeof *s);
	const char *params[32];
	struct expr *defaults[32];
	size_t n = 0;
	s->k = S_MACRO, s->line = line;
	s->targets[0] = expect_name(c);
	s->n_targets = 1;
	expect_op(c, "(");
	while (!is_op(peek(c), ")")) {
		if (n == 32)
			fail(c, line, "too many macro arguments");
		params[n] = expect_name(c);
		defaults[n] = NULL;
		if (is_op(peek(c), "=")) {
			next(c);
			defaults[n] = parse_expr(c);
		}
		n++;
		if (!is_op(peek(c), ","))
			break;
		next(c);
	}
	expect_op(c, ")");
	expect_block_end(c);
	s->params = alloc(c, (n + 1) * sizeof *s->params);
	s->defaults = alloc(c, (n + 1) * sizeof *s->defaults);
	memcpy(s->params, params, n * sizeof *params);
	memcpy(s->defaults, defaults, n * sizeof *defaults);
	s->n_params = n;
	const char *stop;
	s->body = parse_body(c, ends, &stop);
	if (!stop)
		fail(c, line, "'macro' without 'endmacro'");
	expect_block_end(c);
	return s;
}

static struct stmt *parse_body(struct ctx *c, const char *const *ends, const char **stop)
{
	struct stmt head = {0}, *tail = &head;
	*stop = NULL;
	enter(c, peek(c)->line); /* blocks in blocks */
	for (;;) {
		struct token *t = next(c);
		struct stmt *s = NULL;
		if (t->t == T_EOF) /* next() stays on it */
			return leave(c), head.next;
		if (t->t == T_TEXT) {
			s = alloc(c, sizeof *s);
			s->k = S_TEXT, s->line = t->line, s->text = t->s, s->n = t->n;
		} else if (t->t == T_VAR_BEGIN) {
			s = alloc(c, sizeof *s);
			s->k = S_OUT, s->line = t->line, s->e = parse_expr(c);
			if (next(c)->t != T_VAR_END)
				fail(c, t->line, "expected '}}'");
		} else if (t->t == T_BLOCK_BEGIN) {
			struct token *kw = next(c);
			for (size_t i = 0; ends && ends[i]; i++)
				if (is_name(kw, ends[i])) {
					*stop = ends[i];
					return leave(c), head.next;
				}
			if (is_name(kw, "if")) {
				s = parse_if(c, kw->line);
			} else if (is_name(kw, "for")) {
				s = parse_for(c, kw->line);
			} else if (is_name(kw, "macro")) {
				s = parse_macro(c, kw->line);
			} else if (is_name(kw, "set")) {
				s = alloc(c, sizeof *s);
				s->k = S_SET, s->line = kw->line;
				s->targets[0] = expect_name(c);
				s->n_targets = 1;
				if (is_op(peek(c), ".")) {
					next(c);
					s->attr = expect_name(c);
				}
				expect_op(c, "=");
				s->e = parse_expr(c);
				expect_block_end(c);
			} else {
				fail(c, kw->line, "unsupported tag '%.*s'", (int)kw->n, kw->s ? kw->s : "");
			}
		} else {
			fail(c, t->line, "unexpected token");
		}
		tail->next = s;
		tail = s;
	}
}

/* ---- evaluation ---- */

static struct value eval(struct ctx *c, struct scope *sc, struct expr *e);

static struct value lookup(struct scope *sc, const char *name)
{
	for (; sc; sc = sc->up) {
		struct value *v = dict_find(sc->vars, name, strlen(name));
		if (v)
			return *v;
	}
	return v_undef();
}

static long long want_int(struct ctx *c, struct value v, int line, const char *what)
{
	if (v.t == V_INT)
		return v.i;
	if (v.t == V_BOOL)
		return v.b;
	fail(c, line, "%s: expected an integer, got %s", what, type_name(v));
}

static struct value str_val(struct ctx *c, struct value v, int line)
{
	if (v.t == V_STR)
		return v;
	struct sbuf b = {c, NULL, 0, 0};
	sb_put(&b, "", 0);
	to_text(c, &b, v, line);
	return v_str(b.p, b.n);
}

static size_t seq_len(struct ctx *c, struct value v, int line)
{
	switch (v.t) {
	case V_STR: return v.str.n; /* bytes; the templates only compare lengths of lists */
	case V_LIST: return v.l->n;
	case V_DICT: return v.d->n;
	case V_UNDEF: return 0;
	default: fail(c, line, "object of type %s has no length", type_name(v));
	}
}

/* the items for iteration: a list's, a dict's keys, a string's characters */
static struct list *iter_items(struct ctx *c, struct value v, int line)
{
	if (v.t == V_LIST)
		return v.l;
	struct list *l = list_new(c);
	if (v.t == V_DICT) {
		for (size_t i = 0; i < v.d->n; i++)
			list_push(c, l, v.d->k[i]);
	} else if (v.t == V_STR) {
		for (size_t i = 0; i < v.str.n;) {
			size_t k = 1;
			while (i + k < v.str.n && ((unsigned char)v.str.s[i + k] & 0xC0) == 0x80)
				k++;
			list_push(c, l, v_str(v.str.s + i, k));
			i += k;
		}
	} else if (v.t != V_UNDEF && v.t != V_NONE) {
		fail(c, line, "object of type %s is not iterable", type_name(v));
	}
	return l;
}

static struct value get_item(struct ctx *c, struct value obj, struct value key, int line)
{
	if (obj.t == V_DICT) {
		struct value k = str_val(c, key, line);
		struct value *v = dict_find(obj.d, k.str.s, k.str.n);
		return v ? *v : v_undef();
	}
	if (obj.t == V_LIST || obj.t == V_STR) {
		if (key.t != V_INT)
			return v_undef();
		long long n = (long long)seq_len(c, obj, line), i = key.i < 0 ? key.i + n : key.i;
		if (i < 0 || i >= n)
			return v_undef();
		return obj.t == V_LIST ? obj.l->v[i] : v_str(obj.str.s + i, 1);
	}
	return v_undef();
}

static struct value get_attr(struct ctx *c, struct value obj, const char *name, int line)
{
	static const char *const str_methods[] = {"startswith", "endswith", "split", "strip", "lstrip", "rstrip",
						  "lower", "upper", "replace", "title", "capitalize", "join",
						  "find", "count", NULL};
	static const char *const dict_methods[] = {"items", "keys", "values", "get", NULL};
	static const char *const list_methods[] = {"append", "index", NULL};
	if (obj.t == V_DICT) {
		struct value *v = dict_find(obj.d, name, strlen(name));
		if (v)
			return *v;
	}
	const char *const *m = obj.t == V_STR ? str_methods : obj.t == V_DICT ? dict_methods
						    : obj.t == V_LIST ? list_methods : NULL;
	for (; m && *m; m++)
		if (!strcmp(*m, name)) {
			struct func *f = alloc(c, sizeof *f);
			f->name = *m, f->self = obj, f->method = 1;
			return (struct value){.t = V_FUNC, .fn = f};
		}
	return v_undef();
}

/* Python's str.strip family: chars to strip, whitespace by default */
static struct value strip(struct value s, struct value chars, int left, int right)
{
	const char *set = chars.t == V_STR ? chars.str.s : " \t\n\r\v\f";
	const size_t sn = chars.t == V_STR ? chars.str.n : 6;
	size_t a = 0, b = s.str.n;
	while (left && a < b && memchr(set, s.str.s[a], sn))
		a++;
	while (right && b > a && memchr(set, s.str.s[b - 1], sn))
		b--;
	return v_str(s.str.s + a, b - a);
}

static const char *find_sub(const char *h, size_t hn, const char *n, size_t nn)
{
	if (nn == 0)
		return h;
	for (size_t i = 0; i + nn <= hn; i++)
		if (!memcmp(h + i, n, nn))
			return h + i;
	return NULL;
}

static struct value call_method(struct ctx *c, struct func *f, struct value *a, size_t n, int line)
{
	struct value s = f->self;
	const char *m = f->name;
	struct value a0 = n > 0 ? a[0] : v_undef(), a1 = n > 1 ? a[1] : v_undef();
	if (s.t == V_STR) {
		if (!strcmp(m, "startswith") || !strcmp(m, "endswith")) {
			struct value p = str_val(c, a0, line);
			if (p.str.n > s.str.n)
				return v_bool(0);
			return v_bool(!memcmp(m[0] == 's' ? s.str.s : s.str.s + s.str.n - p.str.n, p.str.s, p.str.n));
		}
		if (!strcmp(m, "strip") || !strcmp(m, "lstrip") || !strcmp(m, "rstrip"))
			return strip(s, a0, m[0] != 'r', m[0] != 'l');
		if (!strcmp(m, "lower") || !strcmp(m, "upper") || !strcmp(m, "title") || !strcmp(m, "capitalize")) {
			char *d = dup_n(c, s.str.s, s.str.n);
			int word_start = 1;
			for (size_t i = 0; i < s.str.n; i++) {
				const int ch = (unsigned char)d[i];
				if (!strcmp(m, "lower"))
					d[i] = (char)tolower(ch);
				else if (!strcmp(m, "upper"))
					d[i] = (char)toupper(ch);
				else if (!strcmp(m, "title"))
					d[i] = (char)(word_start ? toupper(ch) : tolower(ch));
				else
					d[i] = (char)(i == 0 ? toupper(ch) : tolower(ch));
				word_start = !isalpha(ch);
			}
			return v_str(d, s.str.n);
		}
		if (!strcmp(m, "split")) {
			struct list *l = list_new(c);
			if (a0.t != V_STR) { /* on runs of whitespace */
				size_t i = 0;
				for (;;) {
					while (i < s.str.n && isspace((unsigned char)s.str.s[i]))
						i++;
					if (i == s.str.n)
						break;
					size_t j = i;
					while (j < s.str.n && !isspace((unsigned char)s.str.s[j]))
						j++;
					list_push(c, l, v_str(s.str.s + i, j - i));
					i = j;
				}
				return (struct value){.t = V_LIST, .l = l};
			}
			if (!a0.str.n)
				fail(c, line, "split: empty separator");
			const char *p = s.str.s, *end = s.str.s + s.str.n, *q;
			while ((q = find_sub(p, (size_t)(end - p), a0.str.s, a0.str.n))) {
				list_push(c, l, v_str(p, (size_t)(q - p)));
				p = q + a0.str.n;
			}
			list_push(c, l, v_str(p, (size_t)(end - p)));
			return (struct value){.t = V_LIST, .l = l};
		}
		if (!strcmp(m, "replace")) {
			struct value x = str_val(c, a0, line), y = str_val(c, a1, line);
			struct sbuf b = {c, NULL, 0, 0};
			sb_put(&b, "", 0);
			const char *p = s.str.s, *end = s.str.s + s.str.n, *q;
			while (x.str.n && (q = find_sub(p, (size_t)(end - p), x.str.s, x.str.n))) {
				sb_put(&b, p, (size_t)(q - p));
				sb_put(&b, y.str.s, y.str.n);
				p = q + x.str.n;
			}
			sb_put(&b, p, (size_t)(end - p));
			return v_str(b.p, b.n);
		}
		if (!strcmp(m, "find") || !strcmp(m, "count")) {
			struct value x = str_val(c, a0, line);
			const char *q = find_sub(s.str.s, s.str.n, x.str.s, x.str.n);
			if (m[0] == 'f')
				return v_int(q ? q - s.str.s : -1);
			long long k = 0;
			for (const char *p = s.str.s; x.str.n && (q = find_sub(p, s.str.n - (size_t)(p - s.str.s), x.str.s, x.str.n));
			     p = q + x.str.n)
				k++;
			return v_int(k);
		}
		if (!strcmp(m, "join")) {
			struct list *l = iter_items(c, a0, line);
			struct sbuf b = {c, NULL, 0, 0};
			sb_put(&b, "", 0);
			for (size_t i = 0; i < l->n; i++) {
				if (i)
					sb_put(&b, s.str.s, s.str.n);
				to_text(c, &b, l->v[i], line);
			}
			return v_str(b.p, b.n);
		}
	}
	if (s.t == V_DICT) {
		if (!strcmp(m, "get")) {
			struct value v = get_item(c, s, a0, line);
			return v.t == V_UNDEF ? (n > 1 ? a1 : v_none()) : v;
		}
		struct list *l = list_new(c);
		for (size_t i = 0; i < s.d->n; i++) {
			if (!strcmp(m, "keys")) {
				list_push(c, l, s.d->k[i]);
			} else if (!strcmp(m, "values")) {
				list_push(c, l, s.d->v[i]);
			} else {
				struct list *pair = list_new(c);
				list_push(c, pair, s.d->k[i]);
				list_push(c, pair, s.d->v[i]);
				list_push(c, l, (struct value){.t = V_LIST, .l = pair});
			}
		}
		return (struct value){.t = V_LIST, .l = l};
	}
	if (s.t == V_LIST) {
		if (!strcmp(m, "append")) {
			list_push(c, s.l, a0);
			return v_none();
		}
		for (size_t i = 0; i < s.l->n; i++)
			if (equal(c, s.l->v[i], a0))
				return v_int((long long)i);
		fail(c, line, "index: value not in list");
	}
	fail(c, line, "%s has no method %s", type_name(s), m);
}

static void run(struct ctx *c, struct scope *sc, struct stmt *s, struct sbuf *out);

/* A macro's body rendered with its arguments, as Jinja2 binds them: positional ones in
 * order, then by name; the rest take their defaults (evaluated now) or are undefined */
static struct value call_macro(struct ctx *c, struct func *f, struct value *a, const char **kw, size_t n, int line)
{
	const struct stmt *m = f->macro;
	struct scope inner = {alloc(c, sizeof(struct dict)), f->scope};
	size_t pos = 0;
	for (size_t i = 0; i < n; i++) {
		size_t j = pos;
		if (kw[i])
			for (j = 0; j < m->n_params && strcmp(m->params[j], kw[i]); j++)
				;
		else
			pos++;
		if (j >= m->n_params && kw[i])
			fail(c, line, "macro %s has no argument %s", m->targets[0], kw[i]);
		if (j >= m->n_params)
			fail(c, line, "macro %s takes %zu arguments", m->targets[0], m->n_params);
		dict_set(c, inner.vars, m->params[j], strlen(m->params[j]), a[i]);
	}
	for (size_t j = 0; j < m->n_params; j++)
		if (!dict_find(inner.vars, m->params[j], strlen(m->params[j])))
			dict_set(c, inner.vars, m->params[j], strlen(m->params[j]),
				 m->defaults[j] ? eval(c, &inner, m->defaults[j]) : v_undef());
	struct sbuf b = {c, NULL, 0, 0};
	sb_put(&b, "", 0);
	enter(c, line); /* a macro that calls itself ends at the depth limit */
	run(c, &inner, m->body, &b);
	leave(c);
	return v_str(b.p, b.n);
}

static struct value call(struct ctx *c, struct value fv, struct value *a, const char **kw, size_t n, int line)
{
	if (fv.t != V_FUNC)
		fail(c, line, "%s is not callable", type_name(fv));
	struct func *f = fv.fn;
	if (f->method)
		return call_method(c, f, a, n, line);
	if (f->macro)
		return call_macro(c, f, a, kw, n, line);
	if (!strcmp(f->name, "raise_exception")) {
		struct value m = str_val(c, n ? a[0] : v_str("", 0), line);
		fail(c, line, "the template raised: %.*s", (int)m.str.n, m.str.s);
	}
	if (!strcmp(f->name, "namespace")) {
		struct value d = {.t = V_DICT, .d = alloc(c, sizeof(struct dict))};
		for (size_t i = 0; i < n; i++) {
			if (kw[i])
				dict_set(c, d.d, kw[i], strlen(kw[i]), a[i]);
			else if (a[i].t == V_DICT)
				for (size_t k = 0; k < a[i].d->n; k++)
					dict_set(c, d.d, a[i].d->k[k].str.s, a[i].d->k[k].str.n, a[i].d->v[k]);
		}
		return d;
	}
	if (!strcmp(f->name, "range")) {
		long long lo = 0, hi, step = 1;
		if (n == 1)
			hi = want_int(c, a[0], line, "range");
		else if (n >= 2)
			lo = want_int(c, a[0], line, "range"), hi = want_int(c, a[1], line, "range");
		else
			fail(c, line, "range needs an argument");
		if (n == 3 && !(step = want_int(c, a[2], line, "range")))
			fail(c, line, "range step 0");
		/* the count first, in 128 bits: the loop below then never steps past a 64-bit end */
		const __int128 span = step > 0 ? (__int128)hi - lo : (__int128)lo - hi;
		const __int128 count = span <= 0 ? 0 : (span - 1) / (step > 0 ? step : -(__int128)step) + 1;
		if (count > TMPL_MAX_BYTES / sizeof(struct value))
			fail(c, line, "range of more than %zu numbers", TMPL_MAX_BYTES / sizeof(struct value));
		struct list *l = list_new(c);
		for (long long k = 0; k < (long long)count; k++)
			list_push(c, l, v_int((long long)(lo + (__int128)k * step)));
		return (struct value){.t = V_LIST, .l = l};
	}
	if (!strcmp(f->name, "strftime_now")) {
		struct value fmt = str_val(c, n ? a[0] : v_str("", 0), line);
		char fz[128], buf[256];
		snprintf(fz, sizeof fz, "%.*s", (int)fmt.str.n, fmt.str.s);
		time_t now = time(NULL);
		struct tm tm;
		localtime_r(&now, &tm);
		size_t k = strftime(buf, sizeof buf, fz, &tm);
		return v_str(dup_n(c, buf, k), k);
	}
	fail(c, line, "unknown function %s", f->name);
}

static struct value apply_filter(struct ctx *c, struct expr *e, struct value v, struct value *a, const char **kw,
				 size_t n)
{
	const char *f = e->name;
	const int line = e->line;
	if (!strcmp(f, "length") || !strcmp(f, "count"))
		return v_int((long long)seq_len(c, v, line));
	if (!strcmp(f, "tojson")) {
		int indent = -1;
		for (size_t i = 0; i < n; i++) {
			if ((kw[i] && strcmp(kw[i], "indent")) || a[i].t == V_NONE)
				continue;
			const long long k = want_int(c, a[i], line, "tojson indent");
			if (k < 0 || k > 64)
				fail(c, line, "tojson indent %lld: 0..64", k);
			indent = (int)k;
		}
		struct sbuf b = {c, NULL, 0, 0};
		sb_put(&b, "", 0);
		to_json(c, &b, v, indent, 0, line);
		return v_str(b.p, b.n);
	}
	if (!strcmp(f, "string"))
		return str_val(c, v, line);
	if (!strcmp(f, "trim"))
		return strip(str_val(c, v, line), n ? a[0] : v_undef(), 1, 1);
	if (!strcmp(f, "upper") || !strcmp(f, "lower") || !strcmp(f, "title") || !strcmp(f, "capitalize")) {
		struct func m = {.name = f, .self = str_val(c, v, line), .method = 1};
		return call_method(c, &m, a, n, line);
	}
	if (!strcmp(f, "replace")) {
		struct func m = {.name = "replace", .self = str_val(c, v, line), .method = 1};
		return call_method(c, &m, a, n, line);
	}
	if (!strcmp(f, "default") || !strcmp(f, "d")) {
		const int boolean = n > 1 && truthy(a[1]);
		return (v.t == V_UNDEF || (boolean && !truthy(v))) ? (n ? a[0] : v_str("", 0)) : v;
	}
	if (!strcmp(f, "first") || !strcmp(f, "last")) {
		struct list *l = iter_items(c, v, line);
		return l->n ? l->v[f[0] == 'f' ? 0 : l->n - 1] : v_undef();
	}
	if (!strcmp(f, "join")) {
		struct func m = {.name = "join", .self = n ? str_val(c, a[0], line) : v_str("", 0), .method = 1};
		return call_method(c, &m, &v, 1, line);
	}
	if (!strcmp(f, "list"))
		return (struct value){.t = V_LIST, .l = iter_items(c, v, line)};
	if (!strcmp(f, "reverse")) {
		if (v.t == V_STR) {
			char *d = alloc(c, v.str.n + 1);
			for (size_t i = 0; i < v.str.n; i++)
				d[i] = v.str.s[v.str.n - 1 - i];
			return v_str(d, v.str.n);
		}
		struct list *src = iter_items(c, v, line), *l = list_new(c);
		for (size_t i = src->n; i-- > 0;)
			list_push(c, l, src->v[i]);
		return (struct value){.t = V_LIST, .l = l};
	}
	if (!strcmp(f, "items")) {
		struct func m = {.name = "items", .self = v, .method = 1};
		return v.t == V_DICT ? call_method(c, &m, a, 0, line) : (struct value){.t = V_LIST, .l = list_new(c)};
	}
	if (!strcmp(f, "int")) {
		if (v.t == V_FLOAT) { /* toward zero, as Python's int(); NaN and the infinities are not integers */
			if (!(v.f > -0x1p63 && v.f < 0x1p63))
				fail(c, line, "int(%g) does not fit in 64 bits", v.f);
			return v_int((long long)v.f);
		}
		if (v.t != V_STR)
			return v_int(want_int(c, v, line, "int"));
		errno = 0;
		const long long i = strtoll(dup_n(c, v.str.s, v.str.n), NULL, 10); /* not a number: 0, as Jinja2 */
		if (errno == ERANGE)
			fail(c, line, "int('%.*s') does not fit in 64 bits", (int)(v.str.n < 40 ? v.str.n : 40), v.str.s);
		return v_int(i);
	}
	if (!strcmp(f, "safe") || !strcmp(f, "e") || !strcmp(f, "escape"))
		return v; /* no autoescaping in chat templates */
	fail(c, line, "unknown filter %s", f);
}

static int apply_test(struct ctx *c, struct expr *e, struct value v, struct value *a, size_t n)
{
	const char *t = e->name;
	if (!strcmp(t, "defined")) return v.t != V_UNDEF;
	if (!strcmp(t, "undefined")) return v.t == V_UNDEF;
	if (!strcmp(t, "none")) return v.t == V_NONE;
	if (!strcmp(t, "string")) return v.t == V_STR;
	if (!strcmp(t, "number")) return v.t == V_INT || v.t == V_FLOAT;
	if (!strcmp(t, "integer")) return v.t == V_INT;
	if (!strcmp(t, "float")) return v.t == V_FLOAT;
	if (!strcmp(t, "boolean")) return v.t == V_BOOL;
	if (!strcmp(t, "true")) return v.t == V_BOOL && v.b;
	if (!strcmp(t, "false")) return v.t == V_BOOL && !v.b;
	if (!strcmp(t, "mapping")) return v.t == V_DICT;
	if (!strcmp(t, "sequence") || !strcmp(t, "iterable")) return v.t == V_LIST || v.t == V_STR || v.t == V_DICT;
	if (!strcmp(t, "callable")) return v.t == V_FUNC;
	if (!strcmp(t, "even") || !strcmp(t, "odd")) return (want_int(c, v, e->line, t) & 1) == (t[0] == 'o');
	if (!strcmp(t, "divisibleby")) {
		long long d = n ? want_int(c, a[0], e->line, t) : 0;
		return d && want_int(c, v, e->line, t) % d == 0;
	}
	if (!strcmp(t, "equalto") || !strcmp(t, "eq") || !strcmp(t, "sameas")) return n && equal(c, v, a[0]);
	fail(c, e->line, "unknown test %s", t);
}

static double num(struct ctx *c, struct value v, int line, const char *op)
{
	if (v.t == V_INT) return (double)v.i;
	if (v.t == V_FLOAT) return v.f;
	if (v.t == V_BOOL) return v.b;
	fail(c, line, "unsupported operand %s for '%s'", type_name(v), op);
}

static int compare(struct ctx *c, struct value a, struct value b, int line, const char *op)
{
	if (a.t == V_STR && b.t == V_STR) {
		int r = memcmp(a.str.s, b.str.s, a.str.n < b.str.n ? a.str.n : b.str.n);
		return r ? r : (a.str.n > b.str.n) - (a.str.n < b.str.n);
	}
	double x = num(c, a, line, op), y = num(c, b, line, op);
	return (x > y) - (x < y);
}

static int contains(struct ctx *c, struct value hay, struct value needle, int line)
{
	if (hay.t == V_STR) {
		struct value n = str_val(c, needle, line);
		return find_sub(hay.str.s, hay.str.n, n.str.s, n.str.n) != NULL;
	}
	if (hay.t == V_DICT)
		return needle.t == V_STR && dict_find(hay.d, needle.str.s, needle.str.n);
	if (hay.t == V_LIST) {
		for (size_t i = 0; i < hay.l->n; i++)
			if (equal(c, hay.l->v[i], needle))
				return 1;
		return 0;
	}
	if (hay.t == V_UNDEF)
		return 0;
	fail(c, line, "'in' needs a string, list or dict, not %s", type_name(hay));
}

/* Python's integer arithmetic where it fits 64 bits; past that the render fails
 * (Python would switch to a big integer: no chat template needs one). */
static struct value int_op(struct ctx *c, const char *op, long long p, long long q, int line)
{
	long long r = 0;
	int over = 0;
	if (!strcmp(op, "+")) {
		over = __builtin_add_overflow(p, q, &r);
	} else if (!strcmp(op, "-")) {
		over = __builtin_sub_overflow(p, q, &r);
	} else if (!strcmp(op, "*")) {
		over = __builtin_mul_overflow(p, q, &r);
	} else if (!strcmp(op, "//") || !strcmp(op, "%")) { /* floor division; q != 0 was checked */
		if (p == LLONG_MIN && q == -1) {
			over = !strcmp(op, "//"); /* LLONG_MIN % -1 is 0 */
		} else {
			const long long quo = p / q, rem = p % q, adj = rem != 0 && ((rem < 0) != (q < 0));
			r = !strcmp(op, "//") ? quo - adj : rem + (adj ? q : 0);
		}
	} else { /* ** with q >= 0, by squaring */
		long long base = p;
		r = 1;
		for (long long e = q; e && !over; e >>= 1) {
			if (e & 1)
				over = __builtin_mul_overflow(r, base, &r);
			if (e > 1 && !over)
				over = __builtin_mul_overflow(base, base, &base);
		}
	}
	if (over)
		fail(c, line, "%lld %s %lld does not fit in 64 bits", p, op, q);
	return v_int(r);
}

static struct value binop(struct ctx *c, const char *op, struct value a, struct value b, int line)
{
	if (!strcmp(op, "~")) {
		struct sbuf s = {c, NULL, 0, 0};
		sb_put(&s, "", 0);
		to_text(c, &s, a, line);
		to_text(c, &s, b, line);
		return v_str(s.p, s.n);
	}
	if (!strcmp(op, "==")) return v_bool(equal(c, a, b));
	if (!strcmp(op, "!=")) return v_bool(!equal(c, a, b));
	if (!strcmp(op, "<")) return v_bool(compare(c, a, b, line, op) < 0);
	if (!strcmp(op, ">")) return v_bool(compare(c, a, b, line, op) > 0);
	if (!strcmp(op, "<=")) return v_bool(compare(c, a, b, line, op) <= 0);
	if (!strcmp(op, ">=")) return v_bool(compare(c, a, b, line, op) >= 0);
	if (!strcmp(op, "in")) return v_bool(contains(c, b, a, line));
	if (!strcmp(op, "ni")) return v_bool(!contains(c, b, a, line));
	if (!strcmp(op, "+") && a.t == V_STR && b.t == V_STR) {
		char *s = alloc(c, a.str.n + b.str.n + 1);
		memcpy(s, a.str.s, a.str.n);
		memcpy(s + a.str.n, b.str.s, b.str.n);
		return v_str(s, a.str.n + b.str.n);
	}
	if (!strcmp(op, "+") && a.t == V_LIST && b.t == V_LIST) {
		struct list *l = list_new(c);
		for (size_t i = 0; i < a.l->n; i++)
			list_push(c, l, a.l->v[i]);
		for (size_t i = 0; i < b.l->n; i++)
			list_push(c, l, b.l->v[i]);
		return (struct value){.t = V_LIST, .l = l};
	}
	if (!strcmp(op, "*") && (a.t == V_STR || b.t == V_STR)) { /* "=" * 3 */
		struct value s = a.t == V_STR ? a : b;
		long long k = want_int(c, a.t == V_STR ? b : a, line, "*");
		if (k <= 0 || s.str.n == 0)
			return v_str("", 0);
		if ((unsigned long long)k > TMPL_MAX_BYTES / s.str.n)
			fail(c, line, "a string of %zu bytes repeated %lld times: more than %u MB", s.str.n, k,
			     TMPL_MAX_BYTES >> 20);
		struct sbuf sb = {c, NULL, 0, 0};
		sb_put(&sb, "", 0);
		for (long long i = 0; i < k; i++)
			sb_put(&sb, s.str.s, s.str.n);
		return v_str(sb.p, sb.n);
	}
	const double x = num(c, a, line, op), y = num(c, b, line, op);
	const int ints = (a.t == V_INT || a.t == V_BOOL) && (b.t == V_INT || b.t == V_BOOL);
	if (!strcmp(op, "/")) {
		if (y == 0)
			fail(c, line, "division by zero");
		return (struct value){.t = V_FLOAT, .f = x / y};
	}
	if ((!strcmp(op, "//") || !strcmp(op, "%")) && y == 0)
		fail(c, line, "division by zero");
	if (ints && !(!strcmp(op, "**") && y < 0)) /* exact, in 64 bits (2 ** -1 is a float, as in Python) */
		return int_op(c, op, a.t == V_INT ? a.i : a.b, b.t == V_INT ? b.i : b.b, line);
	double r = !strcmp(op, "+") ? x + y : !strcmp(op, "-") ? x - y : !strcmp(op, "*") ? x * y
		 : !strcmp(op, "//") ? floor(x / y) : !strcmp(op, "%") ? x - y * floor(x / y) : pow(x, y);
	return (struct value){.t = V_FLOAT, .f = r};
}

static struct value slice(struct ctx *c, struct value v, struct expr *e, struct scope *sc)
{
	struct value lo = e->b ? eval(c, sc, e->b) : v_none(), hi = e->c ? eval(c, sc, e->c) : v_none();
	struct value st = e->args[0] ? eval(c, sc, e->args[0]) : v_none();
	const long long n = (long long)seq_len(c, v, e->line);
	const long long step = st.t == V_NONE ? 1 : want_int(c, st, e->line, "slice step");
	if (!step)
		fail(c, e->line, "slice step 0");
	/* Python's slice.indices */
	long long a, b;
	if (lo.t == V_NONE) {
		a = step > 0 ? 0 : n - 1;
	} else {
		a = want_int(c, lo, e->line, "slice");
		a = a < 0 ? (a + n < 0 ? (step > 0 ? 0 : -1) : a + n) : (a >= n ? (step > 0 ? n : n - 1) : a);
	}
	if (hi.t == V_NONE) {
		b = step > 0 ? n : -1;
	} else {
		b = want_int(c, hi, e->line, "slice");
		b = b < 0 ? (b + n < 0 ? (step > 0 ? 0 : -1) : b + n) : (b >= n ? (step > 0 ? n : n - 1) : b);
	}
	if (v.t == V_STR) {
		struct sbuf s = {c, NULL, 0, 0};
		sb_put(&s, "", 0);
		for (long long i = a; step > 0 ? i < b : i > b;) {
			sb_put(&s, v.str.s + i, 1);
			if (__builtin_add_overflow(i, step, &i)) /* a step past either end: done */
				break;
		}
		return v_str(s.p, s.n);
	}
	struct list *src = iter_items(c, v, e->line), *l = list_new(c);
	for (long long i = a; step > 0 ? i < b : i > b;) {
		list_push(c, l, src->v[i]);
		if (__builtin_add_overflow(i, step, &i))
			break;
	}
	return (struct value){.t = V_LIST, .l = l};
}

static struct value eval_node(struct ctx *c, struct scope *sc, struct expr *e);

/* every evaluation counts a step and a level: the bounds on time and stack */
static struct value eval(struct ctx *c, struct scope *sc, struct expr *e)
{
	if (++c->steps > TMPL_MAX_STEPS)
		fail(c, e->line, "more than %lu steps: a loop that does not end?", TMPL_MAX_STEPS);
	c->line = e->line;
	enter(c, e->line);
	struct value v = eval_node(c, sc, e);
	leave(c);
	return v;
}

static struct value eval_node(struct ctx *c, struct scope *sc, struct expr *e)
{
	struct value args[32];
	switch (e->k) {
	case E_LIT: return e->lit;
	case E_NAME: {
		struct value v = lookup(sc, e->name);
		if (v.t == V_UNDEF && (!strcmp(e->name, "raise_exception") || !strcmp(e->name, "namespace") ||
				       !strcmp(e->name, "range") || !strcmp(e->name, "strftime_now"))) {
			struct func *f = alloc(c, sizeof *f);
			f->name = e->name;
			return (struct value){.t = V_FUNC, .fn = f};
		}
		return v;
	}
	case E_LIST: {
		struct list *l = list_new(c);
		for (size_t i = 0; i < e->nargs; i++)
			list_push(c, l, eval(c, sc, e->args[i]));
		return (struct value){.t = V_LIST, .l = l};
	}
	case E_DICT: {
		struct value d = {.t = V_DICT, .d = alloc(c, sizeof(struct dict))};
		for (size_t i = 0; i + 1 < e->nargs; i += 2) {
			struct value k = str_val(c, eval(c, sc, e->args[i]), e->line);
			dict_set(c, d.d, k.str.s, k.str.n, eval(c, sc, e->args[i + 1]));
		}
		return d;
	}
	case E_ATTR: return get_attr(c, eval(c, sc, e->a), e->name, e->line);
	case E_ITEM: {
		struct value obj = eval(c, sc, e->a), key = eval(c, sc, e->b);
		struct value v = get_item(c, obj, key, e->line);
		if (v.t == V_UNDEF && key.t == V_STR) { /* x['startswith'] finds the method too, as in Jinja2 */
			char *name = dup_n(c, key.str.s, key.str.n);
			v = get_attr(c, obj, name, e->line);
		}
		return v;
	}
	case E_SLICE: return slice(c, eval(c, sc, e->a), e, sc);
	case E_CALL:
	case E_FILTER:
	case E_TEST: {
		for (size_t i = 0; i < e->nargs; i++)
			args[i] = eval(c, sc, e->args[i]);
		struct value v = eval(c, sc, e->a);
		if (e->k == E_CALL)
			return call(c, v, args, e->kw, e->nargs, e->line);
		if (e->k == E_FILTER)
			return apply_filter(c, e, v, args, e->kw, e->nargs);
		return v_bool(apply_test(c, e, v, args, e->nargs) != e->negate);
	}
	case E_NOT: return v_bool(!truthy(eval(c, sc, e->a)));
	case E_NEG: {
		struct value v = eval(c, sc, e->a);
		if (!e->negate)
			return v;
		if (v.t == V_FLOAT)
			return (struct value){.t = V_FLOAT, .f = -v.f};
		const long long i = want_int(c, v, e->line, "unary -");
		if (i == LLONG_MIN)
			fail(c, e->line, "-(%lld) does not fit in 64 bits", i);
		return v_int(-i);
	}
	case E_BIN: {
		struct value a = eval(c, sc, e->a), b = eval(c, sc, e->b);
		if ((a.t == V_UNDEF || b.t == V_UNDEF) && strcmp(e->op, "~") && strcmp(e->op, "==") && strcmp(e->op, "!=") &&
		    strcmp(e->op, "in") && strcmp(e->op, "ni"))
			fail(c, e->line, "'%s' on an undefined value", e->op);
		return binop(c, e->op, a, b, e->line);
	}
	case E_AND: {
		struct value a = eval(c, sc, e->a);
		return truthy(a) ? eval(c, sc, e->b) : a;
	}
	case E_OR: {
		struct value a = eval(c, sc, e->a);
		return truthy(a) ? a : eval(c, sc, e->b);
	}
	case E_COND: return truthy(eval(c, sc, e->b)) ? eval(c, sc, e->a) : e->c ? eval(c, sc, e->c) : v_undef();
	}
	return v_undef();
}

/* a scope chain copied into the arena (its dicts are there already): a macro keeps the
 * scopes it was defined in after the loop or call whose C frame held them has returned */
static struct scope *scope_keep(struct ctx *c, const struct scope *sc)
{
	if (!sc)
		return NULL;
	struct scope *k = alloc(c, sizeof *k);
	k->vars = sc->vars;
	k->up = scope_keep(c, sc->up);
	return k;
}

static void run_for(struct ctx *c, struct scope *sc, struct stmt *s, struct sbuf *out)
{
	struct list *items = iter_items(c, eval(c, sc, s->e), s->line);
	struct scope inner = {alloc(c, sizeof(struct dict)), sc};
	if (s->filter) { /* {% for x in xs if cond %}: loop.* counts only what passes */
		struct list *kept = list_new(c);
		for (size_t i = 0; i < items->n; i++) {
			dict_set(c, inner.vars, s->targets[0], strlen(s->targets[0]), items->v[i]);
			if (truthy(eval(c, &inner, s->filter)))
				list_push(c, kept, items->v[i]);
		}
		items = kept;
	}
	if (!items->n) {
		run(c, sc, s->orelse, out);
		return;
	}
	struct value loop = {.t = V_DICT, .d = alloc(c, sizeof(struct dict))};
	for (size_t i = 0; i < items->n; i++) {
		inner.vars = alloc(c, sizeof(struct dict)); /* a fresh scope each pass, as in Jinja2 */
		const long long n = (long long)items->n, k = (long long)i;
		loop.d = alloc(c, sizeof(struct dict));
		dict_set(c, loop.d, "index0", 6, v_int(k));
		dict_set(c, loop.d, "index", 5, v_int(k + 1));
		dict_set(c, loop.d, "revindex0", 9, v_int(n - k - 1));
		dict_set(c, loop.d, "revindex", 8, v_int(n - k));
		dict_set(c, loop.d, "first", 5, v_bool(i == 0));
		dict_set(c, loop.d, "last", 4, v_bool(i + 1 == items->n));
		dict_set(c, loop.d, "length", 6, v_int(n));
		dict_set(c, loop.d, "previtem", 8, i ? items->v[i - 1] : v_undef());
		dict_set(c, loop.d, "nextitem", 8, i + 1 < items->n ? items->v[i + 1] : v_undef());
		dict_set(c, inner.vars, "loop", 4, loop);
		struct value it = items->v[i];
		if (s->n_targets == 1) {
			dict_set(c, inner.vars, s->targets[0], strlen(s->targets[0]), it);
		} else {
			struct list *parts = iter_items(c, it, s->line);
			if (parts->n != s->n_targets)
				fail(c, s->line, "cannot unpack %zu values into %zu loop variables", parts->n, s->n_targets);
			for (size_t t = 0; t < s->n_targets; t++)
				dict_set(c, inner.vars, s->targets[t], strlen(s->targets[t]), parts->v[t]);
		}
		run(c, &inner, s->body, out);
	}
}

static void run(struct ctx *c, struct scope *sc, struct stmt *s, struct sbuf *out)
{
	for (; s; s = s->next) {
		if (++c->steps > TMPL_MAX_STEPS)
			fail(c, s->line, "more than %lu steps: a loop that does not end?", TMPL_MAX_STEPS);
		c->line = s->line;
		switch (s->k) {
		case S_TEXT: sb_put(out, s->text, s->n); break;
		case S_OUT: to_text(c, out, eval(c, sc, s->e), s->line); break;
		case S_IF: run(c, sc, truthy(eval(c, sc, s->e)) ? s->body : s->orelse, out); break;
		case S_FOR: run_for(c, sc, s, out); break;
		case S_SET: {
			struct value v = eval(c, sc, s->e);
			if (!s->attr) {
				dict_set(c, sc->vars, s->targets[0], strlen(s->targets[0]), v);
				break;
			}
			struct value ns = lookup(sc, s->targets[0]);
			if (ns.t != V_DICT)
				fail(c, s->line, "cannot set an attribute of %s", type_name(ns));
			dict_set(c, ns.d, s->attr, strlen(s->attr), v);
			break;
		}
		case S_MACRO: {
			struct func *f = alloc(c, sizeof *f);
			f->name = s->targets[0], f->macro = s, f->scope = scope_keep(c, sc);
			dict_set(c, sc->vars, s->targets[0], strlen(s->targets[0]), (struct value){.t = V_FUNC, .fn = f});
			break;
		}
		}
	}
}

int moe_template_render(const char *tmpl, const char *context_json, char **out, size_t *out_len)
{
	json_error_t jerr;
	json_t *ctx_json = json_loads(context_json, 0, &jerr);
	if (!json_is_object(ctx_json)) {
		json_decref(ctx_json);
		return moe_fail(MOE_EINVAL, "chat template: variables are not a JSON object: %s", jerr.text);
	}
	struct ctx c = {0};
	int rc = 0;
	if (setjmp(c.fail)) {
		rc = moe_fail(MOE_EINVAL, "chat template: %s", c.err);
		goto done;
	}
	lex(&c, tmpl, strlen(tmpl));
	const char *stop;
	struct stmt *prog = parse_body(&c, NULL, &stop);
	if (peek(&c)->t != T_EOF)
		fail(&c, peek(&c)->line, "unexpected end tag");
	struct value globals = from_json(&c, ctx_json);
	struct scope top = {globals.d, NULL};
	struct sbuf b = {&c, NULL, 0, 0};
	sb_put(&b, "", 0);
	run(&c, &top, prog, &b);
	if (!(*out = malloc(b.n + 1))) {
		rc = moe_fail(MOE_ENOMEM, "out of memory");
		goto done;
	}
	memcpy(*out, b.p, b.n + 1);
	*out_len = b.n;
done:
	json_decref(ctx_json);
	while (c.arena) {
		struct chunk *k = c.arena->next;
		free(c.arena);
		c.arena = k;
	}
	return rc;
}

int moe_chat_render(const char *tmpl, const char *messages_json, const char *bos, const char *eos,
		    int add_generation_prompt, const char *kwargs_json, char **out, size_t *out_len)
{
	json_error_t jerr;
	json_t *ctx = kwargs_json ? json_loads(kwargs_json, 0, &jerr) : json_object();
	if (!json_is_object(ctx)) {
		json_decref(ctx);
		return moe_fail(MOE_EINVAL, "chat template variables: not a JSON object%s%s", kwargs_json ? ": " : "",
				kwargs_json ? jerr.text : "");
	}
	json_t *messages = json_loads(messages_json, 0, &jerr);
	size_t i;
	json_t *m;
	int rc = 0;
	if (!json_is_array(messages)) {
		rc = moe_fail(MOE_EINVAL, "messages: not a JSON array of {\"role\", \"content\"}: %s",
			      messages ? "not an array" : jerr.text);
		goto out;
	}
	json_array_foreach(messages, i, m) {
		if (!json_is_string(json_object_get(m, "role"))) {
			rc = moe_fail(MOE_EINVAL, "messages[%zu]: no \"role\"", i);
			goto out;
		}
	}
	json_object_set(ctx, "messages", messages);
	json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt));
	if (bos)
		json_object_set_new(ctx, "bos_token", json_string(bos));
	if (eos)
		json_object_set_new(ctx, "eos_token", json_string(eos));
	char *vars = json_dumps(ctx, JSON_COMPACT);
	rc = vars ? moe_template_render(tmpl, vars, out, out_len) : moe_fail(MOE_ENOMEM, "out of memory");
	free(vars);
out:
	json_decref(messages);
	json_decref(ctx);
	return rc;
}

const char *moe_chat_template_builtin(const char *name)
{
	/* verbatim from the models' tokenizer_config.json */
	static const struct {
		const char *name, *tmpl;
	} builtin[] = {
		{"mistral-v1",
		 "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
		 "{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}"
		 "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + ' [/INST]' }}"
		 "{% elif message['role'] == 'assistant' %}{{ message['content'] + eos_token}}{% else %}"
		 "{{ raise_exception('Only user and assistant roles are supported!') }}{% endif %}{% endfor %}"},
		{"chatml",
		 "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
		 "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"},
	};
	for (size_t i = 0; i < sizeof builtin / sizeof *builtin; i++)
		if (!strcmp(name, builtin[i].name))
			return builtin[i].tmpl;
	return NULL;
}
