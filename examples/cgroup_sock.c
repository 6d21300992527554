/* A cgroup socket-creation hook: refuses raw sockets and marks TCP sockets. */
#include "jitbpf_helpers.h"

#define SOCK_STREAM 1
#define SOCK_RAW 3
#define TCP_MARK 0x77

SEC("cgroup/sock")
int sock_create(struct bpf_sock *sk)
{
	if (sk->type == SOCK_RAW)
		return 0;
	if (sk->type == SOCK_STREAM && sk->protocol == IPPROTO_TCP)
		sk->mark = TCP_MARK;
	return 1;
}

char LICENSE[] SEC("license") = "GPL";
