/* static_link.c - the smallest program against the public header, linked by
 * tests/static_link.sh with nothing but `pkg-config --static --cflags --libs moe`:
 * opens a pack, verifies every checksum and prints what it holds. */
#include <stdio.h>

#include <moe.h>

int main(int argc, char **argv)
{
	moe_pack *pack;
	if (argc != 2) {
		fprintf(stderr, "usage: static_link PACK\n");
		return 2;
	}
	if (moe_pack_open(argv[1], &pack) || moe_pack_verify(pack, NULL, NULL)) {
		fprintf(stderr, "static_link: %s\n", moe_last_error());
		return 1;
	}
	printf("%zu tensors, %zu experts\n", moe_pack_tensor_count(pack), moe_pack_expert_count(pack));
	moe_pack_close(pack);
	return 0;
}
