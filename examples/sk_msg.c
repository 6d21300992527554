/* A sockmap message verdict: drops messages that start with "BLOCK", passes the rest whole. */
#include "jitbpf_helpers.h"

SEC("sk_msg")
int msg_verdict(struct sk_msg_md *msg)
{
	char *data = msg->data;
	char *data_end = msg->data_end;

	if (data + 5 <= data_end && data[0] == 'B' && data[1] == 'L' && data[2] == 'O' && data[3] == 'C' &&
	    data[4] == 'K')
		return SK_DROP;
	bpf_msg_apply_bytes(msg, msg->size);
	return SK_PASS;
}

char LICENSE[] SEC("license") = "GPL";
