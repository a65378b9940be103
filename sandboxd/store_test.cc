#include "sandboxd/store.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace sbx::sandboxd {
namespace {

TEST(StoreTest, IdsAndNamesCannotNameAPathOutsideTheStateDir) {
  EXPECT_TRUE(ValidateSandboxId("sb-0123456789abcdef").ok());
  for (const char* bad : {"", "sb-", "sb-0123456789ABCDEF", "sb-0123456789abcde/", "../sb",
                          "sb-0123456789abcdef0", "sb-../../../../etc", "xx-0123456789abcdef"}) {
    EXPECT_EQ(ValidateSandboxId(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  EXPECT_TRUE(ValidateTemplateName("default").ok());
  EXPECT_TRUE(ValidateTemplateName("py3_12-slim").ok());
  for (const char* bad : {"", "..", ".hidden", "a/b", "-x", "Default", "a b",
                          "0123456789012345678901234567890123456789012345678901234567890123"}) {
    EXPECT_EQ(ValidateTemplateName(bad).code(), absl::StatusCode::kInvalidArgument) << bad;
  }
  std::set<std::string> ids;
  for (int i = 0; i < 100; ++i) {
    std::string id = NewSandboxId();
    EXPECT_TRUE(ValidateSandboxId(id).ok()) << id;
    ids.insert(id);
  }
  EXPECT_EQ(ids.size(), 100u);
}

TEST(StoreTest, RecordsRoundTripAndCorruptOnesAreSkipped) {
  const std::string dir = absl::StrCat(::testing::TempDir(), "/store_test_", ::getpid());
  std::filesystem::remove_all(dir);
  auto store = Store::Open(dir);
  ASSERT_TRUE(store.ok()) << store.status();
  sandboxd::v1::SandboxRecord record;
  record.mutable_sandbox()->set_id("sb-00000000000000aa");
  record.mutable_sandbox()->set_state(sbx::v1::SLEEPING);
  (*record.mutable_env())["A"] = "1";
  ASSERT_TRUE(store->SaveSandbox(record).ok());
  record.mutable_sandbox()->set_state(sbx::v1::RUNNING);
  ASSERT_TRUE(store->SaveSandbox(record).ok());  // replaced, not appended
  // A corrupt record and debris are skipped, not fatal.
  std::filesystem::create_directories(dir + "/sandboxes/sb-00000000000000bb");
  std::ofstream(dir + "/sandboxes/sb-00000000000000bb/sandbox.pb") << "\xff\xff\xff garbage";
  std::filesystem::create_directories(dir + "/sandboxes/not-an-id");
  auto loaded = store->LoadSandboxes();
  ASSERT_EQ(loaded.size(), 1u);
  EXPECT_EQ(loaded[0].sandbox().state(), sbx::v1::RUNNING);
  EXPECT_EQ(loaded[0].env().at("A"), "1");
  EXPECT_FALSE(std::filesystem::exists(dir + "/sandboxes/sb-00000000000000aa/sandbox.pb.tmp"));
  ASSERT_TRUE(store->RemoveSandbox("sb-00000000000000aa").ok());
  EXPECT_FALSE(std::filesystem::exists(dir + "/sandboxes/sb-00000000000000aa"));
  EXPECT_EQ(store->RemoveSandbox("../templates").code(), absl::StatusCode::kInvalidArgument);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace sbx::sandboxd
