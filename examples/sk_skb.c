/* A sockmap stream parser (each message is the whole skb) and verdict (drops data that starts
 * with "DROP"). */
#include "jitbpf_helpers.h"

SEC("sk_skb/stream_parser")
int parser(struct __sk_buff *skb)
{
	return skb->len;
}

SEC("sk_skb/stream_verdict")
int verdict(struct __sk_buff *skb)
{
	char *data = (void *)(long)skb->data;
	char *data_end = (void *)(long)skb->data_end;

	if (data + 4 > data_end)
		return SK_PASS;
	if (data[0] == 'D' && data[1] == 'R' && data[2] == 'O' && data[3] == 'P')
		return SK_DROP;
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
