// The shipped sbx-agent binary (the one the rootfs installs as /sbin/init),
// run on the host with --listen unix:PATH and driven by the client.

#include <elf.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>

#include "absl/strings/numbers.h"
#include "base/test_facility.h"
#include "gtest/gtest.h"
#include "guest/client.h"

namespace sbx::agent {
namespace {

// Peak resident memory of `pid` in KiB (VmHWM), or -1.
int64_t PeakRssKiB(pid_t pid) {
  std::ifstream status("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(status, line)) {
    if (line.rfind("VmHWM:", 0) != 0) continue;
    int64_t kib = -1;
    std::string digits = line.substr(6, line.find("kB") - 6);
    digits.erase(0, digits.find_first_not_of(" \t"));
    digits.erase(digits.find_last_not_of(" \t") + 1);
    return absl::SimpleAtoi(digits, &kib) ? kib : -1;
  }
  return -1;
}

// A reproducible byte stream and its FNV-1a hash, so 100 MiB need not be
// held anywhere.
class ByteStream {
 public:
  void Fill(char* buffer, size_t size) {
    for (size_t i = 0; i < size; ++i) {
      state_ = state_ * 6364136223846793005ull + 1442695040888963407ull;
      buffer[i] = static_cast<char>(state_ >> 56);
    }
  }

 private:
  uint64_t state_ = 42;
};

uint64_t Fnv(uint64_t hash, std::string_view data) {
  for (char c : data) {
    hash ^= static_cast<unsigned char>(c);
    hash *= 1099511628211ull;
  }
  return hash;
}

class AgentBinaryTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "agent_bin_XXXXXX";
    ASSERT_NE(mkdtemp(pattern.data()), nullptr);
    dir_ = pattern;
    std::string socket = dir_ + "/agent.sock";
    std::string listen = "unix:" + socket;
    pid_ = fork();
    ASSERT_GE(pid_, 0);
    if (pid_ == 0) {
      execl(SBX_AGENT_BINARY, SBX_AGENT_BINARY, "--listen", listen.c_str(),
            nullptr);
      _exit(127);
    }
    client_ = std::make_unique<Client>(NewUnixDialer(socket));
    for (int i = 0; i < 500; ++i) {
      if (client_->Ping().ok()) return;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
    FAIL() << "sbx-agent did not answer on " << socket;
  }

  void TearDown() override {
    if (pid_ > 0) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::filesystem::remove_all(dir_);
  }

  std::string dir_;
  pid_t pid_ = -1;
  std::unique_ptr<Client> client_;
};

TEST(AgentBinary, IsStaticallyLinked) {
#ifdef SBX_SANITIZED_BUILD
  GTEST_SKIP() << "sanitized build: the agent links dynamically (the "
                  "sanitizer runtimes have no static form); the Release "
                  "build's agent is the static one";
#endif
  // No program interpreter: the rootfs's libc does not matter.
  std::ifstream file(SBX_AGENT_BINARY, std::ios::binary);
  Elf64_Ehdr header;
  ASSERT_TRUE(file.read(reinterpret_cast<char*>(&header), sizeof(header)));
  ASSERT_EQ(memcmp(header.e_ident, ELFMAG, SELFMAG), 0);
  for (int i = 0; i < header.e_phnum; ++i) {
    Elf64_Phdr phdr;
    file.seekg(header.e_phoff + i * header.e_phentsize);
    ASSERT_TRUE(file.read(reinterpret_cast<char*>(&phdr), sizeof(phdr)));
    EXPECT_NE(phdr.p_type, PT_INTERP) << SBX_AGENT_BINARY
                                      << " is dynamically linked";
    EXPECT_NE(phdr.p_type, PT_DYNAMIC);
  }
}

TEST(AgentBinary, RefusesToRunAsAnOrdinaryProcessWithoutListen) {
  std::string command = std::string(SBX_AGENT_BINARY) + " 2>/dev/null";
  int status = system(command.c_str());
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 2);
}

TEST_F(AgentBinaryTest, RunsPython) {
  absl::StatusOr<ExecResult> result =
      client_->Run({"python3", "-c", "print(6*7)"});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->stdout_data, "42\n");
  EXPECT_EQ(result->exited.exit_code(), 0);
}

TEST_F(AgentBinaryTest, HundredMiBFileRoundTripsInBoundedMemory) {
  constexpr uint64_t kSize = uint64_t{100} << 20;
  ByteStream out;
  uint64_t sent_hash = 14695981039346656037ull;
  uint64_t left = kSize;
  WriteFile request;
  request.set_path(dir_ + "/big.bin");
  absl::StatusOr<uint64_t> written = client_->WriteFile(
      request, [&](char* buffer, size_t size) -> absl::StatusOr<size_t> {
        size_t n = static_cast<size_t>(std::min<uint64_t>(size, left));
        out.Fill(buffer, n);
        sent_hash = Fnv(sent_hash, std::string_view(buffer, n));
        left -= n;
        return n;
      });
  ASSERT_TRUE(written.ok()) << written.status();
  EXPECT_EQ(*written, kSize);
  EXPECT_EQ(std::filesystem::file_size(dir_ + "/big.bin"), kSize);

  uint64_t received = 0;
  uint64_t received_hash = 14695981039346656037ull;
  ReadFile read;
  read.set_path(dir_ + "/big.bin");
  absl::StatusOr<FileInfo> info =
      client_->ReadFile(read, [&](std::string_view chunk) {
        received += chunk.size();
        received_hash = Fnv(received_hash, chunk);
        return absl::OkStatus();
      });
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->size(), kSize);
  EXPECT_EQ(received, kSize);
  EXPECT_EQ(received_hash, sent_hash) << "the file came back different";

  // The agent streamed it: its peak memory stays far below the file.
  // (Not under ASan, whose quarantine keeps freed memory resident.)
  int64_t peak = PeakRssKiB(pid_);
  ASSERT_GT(peak, 0);
#ifndef SBX_SANITIZED_BUILD
  EXPECT_LT(peak, 32 * 1024) << "sbx-agent peaked at " << peak << " KiB";
#endif
}

TEST_F(AgentBinaryTest, RefusesToChangeTheHost) {
  EXPECT_EQ(client_->Shutdown().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(client_->AfterRestore(std::string(32, 'e'), 1).code(),
            absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<Pong> pong = client_->Ping();
  ASSERT_TRUE(pong.ok());
  EXPECT_FALSE(pong->pid1());
}

}  // namespace
}  // namespace sbx::agent
