// Fuzzes the length-prefixed protobuf framing (guest/frame.h: 4-byte
// little-endian length, the message, at most kMaxFrameBytes) with the real
// ReadFrame over a real stream: the input after its first byte is written
// into a socketpair whose far end is then closed, and frames are read
// until the clean end of the stream or an error. The first byte picks the
// message every frame is parsed as: what the agent reads (agent Request),
// what the host reads from the agent (agent Response), and the control
// channel of sbx-vmm, which shares the framing (control Request and
// Response).
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "fuzz/fuzz_common.h"
#include "guest/frame.h"
#include "proto/agent.pb.h"
#include "proto/control.pb.h"

namespace sbx::fuzz {
namespace {

std::unique_ptr<google::protobuf::MessageLite> MessageFor(uint8_t kind) {
  switch (kind % 4) {
    case 0:
      return std::make_unique<sbx::agent::v1::Request>();
    case 1:
      return std::make_unique<sbx::agent::v1::Response>();
    case 2:
      return std::make_unique<sbx::control::v1::Request>();
    default:
      return std::make_unique<sbx::control::v1::Response>();
  }
}

// A socketpair whose send buffer holds any input the fuzzer makes
// (-max_len stays far below it).
void Pair(UniqueFd& reader, UniqueFd& writer) {
  int sv[2];
  SBX_FUZZ_ASSERT(::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) == 0);
  reader.reset(sv[0]);
  writer.reset(sv[1]);
  int size = 4 << 20;
  ::setsockopt(writer.get(), SOL_SOCKET, SO_SNDBUF, &size, sizeof(size));
  ::setsockopt(reader.get(), SOL_SOCKET, SO_RCVBUF, &size, sizeof(size));
}

void RunOne(const uint8_t* data, size_t size) {
  if (size == 0) return;
  std::unique_ptr<google::protobuf::MessageLite> message = MessageFor(data[0]);
  std::span<const uint8_t> stream(data + 1, size - 1);

  UniqueFd reader, writer;
  Pair(reader, writer);
  // A blocking write of the whole stream: it fits the socket buffer (an
  // input too large to fit is skipped rather than deadlocking).
  if (stream.size() > 256 * 1024) return;
  size_t done = 0;
  while (done < stream.size()) {
    ssize_t n = ::send(writer.get(), stream.data() + done, stream.size() - done,
                       MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n <= 0) return;
    done += static_cast<size_t>(n);
  }
  writer.reset();

  size_t consumed = 0;
  for (int frames = 0;; ++frames) {
    message->Clear();
    absl::StatusOr<bool> got = sbx::agent::ReadFrame(reader.get(), *message);
    if (!got.ok() || !*got) {
      // A clean end only between frames: every byte was consumed.
      if (got.ok()) SBX_FUZZ_ASSERT(consumed == stream.size());
      break;
    }
    // How far the reader got: everything but what is still unread.
    int left = 0;
    SBX_FUZZ_ASSERT(::ioctl(reader.get(), FIONREAD, &left) == 0);
    consumed = stream.size() - static_cast<size_t>(left);

    // Round trip: what was read writes and reads back.
    UniqueFd r2, w2;
    Pair(r2, w2);
    if (message->ByteSizeLong() <= 64 * 1024) {
      SBX_FUZZ_ASSERT(sbx::agent::WriteFrame(w2.get(), *message).ok());
      w2.reset();
      std::unique_ptr<google::protobuf::MessageLite> again = MessageFor(data[0]);
      absl::StatusOr<bool> back = sbx::agent::ReadFrame(r2.get(), *again);
      SBX_FUZZ_ASSERT(back.ok() && *back);
      // (Byte-for-byte equality does not hold: map order is free.)
      SBX_FUZZ_ASSERT(again->ByteSizeLong() == message->ByteSizeLong());
    }
  }
}

void WriteSeeds() {
  auto stream = [](uint8_t kind,
                   std::initializer_list<const google::protobuf::MessageLite*> ms) {
    std::vector<uint8_t> out{kind};
    for (const auto* m : ms) {
      std::string payload = m->SerializeAsString();
      for (int i = 0; i < 4; ++i) {
        out.push_back(static_cast<uint8_t>(payload.size() >> (8 * i)));
      }
      out.insert(out.end(), payload.begin(), payload.end());
    }
    return out;
  };
  sbx::agent::v1::Request ping;
  ping.mutable_ping();
  sbx::agent::v1::Request exec;
  exec.mutable_exec()->add_argv("/bin/sh");
  exec.mutable_exec()->add_argv("-c");
  exec.mutable_exec()->add_argv("echo hello");
  (*exec.mutable_exec()->mutable_env())["PATH"] = "/usr/bin:/bin";
  exec.mutable_exec()->set_cwd("/tmp");
  sbx::agent::v1::Request write;
  write.mutable_write_file()->set_path("/tmp/x");
  sbx::agent::v1::Request chunk;
  chunk.mutable_chunk()->set_data("some file content");
  WriteSeed("agent_requests", stream(0, {&ping, &exec, &write, &chunk}));

  sbx::agent::v1::Response pong;
  pong.mutable_pong();
  sbx::agent::v1::Response output;
  output.mutable_output()->set_data("hello\n");
  sbx::agent::v1::Response exited;
  exited.mutable_exited()->set_exit_code(0);
  WriteSeed("agent_responses", stream(1, {&pong, &output, &exited}));

  sbx::control::v1::Request snap;
  snap.mutable_snapshot();
  sbx::control::v1::Request pause;
  pause.mutable_pause();
  WriteSeed("control_requests", stream(2, {&pause, &snap}));
  sbx::control::v1::Response stats;
  stats.mutable_stats();
  WriteSeed("control_responses", stream(3, {&stats}));

  // A header announcing more than the stream holds; an oversized length.
  WriteSeed("truncated", std::vector<uint8_t>{0, 10, 0, 0, 0, 0x08, 0x01});
  WriteSeed("oversized", std::vector<uint8_t>{1, 0x01, 0x00, 0x40, 0x00});
}

}  // namespace
}  // namespace sbx::fuzz

// libFuzzer's entry points: this target's WriteSeeds and RunOne.
SBX_FUZZ_ENTRY_POINTS()
