/* fuzz_template - a chat template parsed and rendered on a small conversation with
 * tools and extra variables, as moe-run --chat does. */
#include "fuzz.h"

#include <stdlib.h>

#include "text/template.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	char *tmpl = malloc(size + 1);
	memcpy(tmpl, data, size);
	tmpl[size] = '\0';
	static const char msgs[] = "[{\"role\": \"system\", \"content\": \"Be brief.\"}, {\"role\": \"user\", \"content\": "
				   "\"hi\"}, {\"role\": \"assistant\", \"content\": \"<think>x</think>yo\", \"tool_calls\": "
				   "[{\"function\": {\"name\": \"f\", \"arguments\": {\"a\": 1}}}]}, {\"role\": \"tool\", "
				   "\"content\": \"42\"}, {\"role\": \"user\", \"content\": \"more\"}]";
	char *out = NULL;
	size_t ol;
	if (moe_chat_render(tmpl, msgs, "<s>", "</s>", 1, "{\"enable_thinking\": false, \"n\": -3}", &out, &ol) == 0)
		free(out);
	free(tmpl);
	return 0;
}
