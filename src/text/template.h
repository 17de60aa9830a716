/*
 * template.h - chat templates: the subset of Jinja2 that models' tokenizer_config.json
 * templates use, rendered the way transformers' apply_chat_template renders them
 * (trim_blocks and lstrip_blocks on; raise_exception, namespace, strftime_now and a
 * tojson that matches Python's json.dumps(ensure_ascii=False)).
 *
 * Statements: if/elif/else, for (loop.*, tuple targets, an "if" filter, else),
 * set (names and namespace attributes), macro/call-free. Expressions: literals,
 * lists, dicts, attribute/item/slice access, calls, filters, tests, "x if c else y",
 * and, or, not, in, ==/!=/</>, + - * / // % ~. Strings have Python's methods
 * (startswith, split, strip, ...), dicts items/keys/values/get.
 */
#ifndef MOE_TEXT_TEMPLATE_H
#define MOE_TEXT_TEMPLATE_H

#include <stddef.h>

/* Render tmpl with the variables of context_json (a JSON object: messages,
 * add_generation_prompt, bos_token, ...). *out is malloc'd, NUL-terminated. An
 * error (syntax, raise_exception, a type error) names the template line. */
int moe_template_render(const char *tmpl, const char *context_json, char **out, size_t *out_len);

/* A chat prompt: messages (a JSON array of {"role", "content", ...}) rendered with
 * bos_token, eos_token, add_generation_prompt and the variables of kwargs_json (a
 * JSON object such as {"enable_thinking": false}; may be NULL). */
int moe_chat_render(const char *tmpl, const char *messages_json, const char *bos, const char *eos,
		    int add_generation_prompt, const char *kwargs_json, char **out, size_t *out_len);

/* Templates by name for models whose files carry none: "mistral-v1" (Mistral and
 * Mixtral Instruct v0.1, as their tokenizer_config.json has it), "chatml". NULL if unknown. */
const char *moe_chat_template_builtin(const char *name);

#endif
