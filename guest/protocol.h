#ifndef SBX_GUEST_PROTOCOL_H_
#define SBX_GUEST_PROTOCOL_H_

// The agent protocol's messages (proto/agent.proto, package sbx.agent.v1)
// by their short names inside sbx::agent: the agent and its client are the
// only users and name them everywhere.
#include "proto/agent.pb.h"  // IWYU pragma: export

namespace sbx::agent {
using namespace ::sbx::agent::v1;  // NOLINT(build/namespaces)
}  // namespace sbx::agent

#endif  // SBX_GUEST_PROTOCOL_H_
