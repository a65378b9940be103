#include "sandboxd/ctl/args.h"

#include <map>
#include <string>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace sbx::ctl {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::Pair;
using ::testing::UnorderedElementsAre;

std::map<std::string, std::string> g_env;

absl::StatusOr<Options> Parse(std::vector<std::string> args,
                              std::map<std::string, std::string> env = {}) {
  g_env = std::move(env);
  return ParseArgs(args, [](const char* name) -> const char* {
    auto it = g_env.find(name);
    return it == g_env.end() ? nullptr : it->second.c_str();
  });
}

std::string Error(std::vector<std::string> args) {
  absl::StatusOr<Options> o = Parse(std::move(args));
  EXPECT_FALSE(o.ok());
  EXPECT_EQ(o.status().code(), absl::StatusCode::kInvalidArgument);
  return std::string(o.status().message());
}

TEST(ArgsTest, RunTakesEveryFlagAndTheCommandAfterDashDash) {
  auto o = Parse({"run", "--template", "py", "--cpus", "2", "--memory", "1G",
                  "--disk=2048", "--timeout", "1h30m", "-e", "A=1", "-e",
                  "B=x=y", "-w", "/tmp", "--keep", "--", "sh", "-c", "echo --keep"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->command, Command::kRun);
  EXPECT_EQ(o->template_name, "py");
  EXPECT_EQ(o->cpus, 2u);
  EXPECT_EQ(o->memory_mib, 1024u);
  EXPECT_EQ(o->disk_mib, 2048u);
  EXPECT_EQ(o->timeout, absl::Hours(1) + absl::Minutes(30));
  EXPECT_THAT(o->env, UnorderedElementsAre(Pair("A", "1"), Pair("B", "x=y")));
  EXPECT_EQ(o->cwd, "/tmp");
  EXPECT_TRUE(o->keep);
  // Flags after `--` belong to the command.
  EXPECT_THAT(o->argv, ElementsAre("sh", "-c", "echo --keep"));
}

TEST(ArgsTest, RunWithoutDashDashStopsAtTheFirstWord) {
  auto o = Parse({"run", "--cpus", "1", "ls", "-l", "--json"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->argv, ElementsAre("ls", "-l", "--json"));
  EXPECT_FALSE(o->json);
}

TEST(ArgsTest, ExecTakesTheIdThenTheCommand) {
  auto o = Parse({"exec", "sb-0123456789abcdef", "--timeout", "30s", "-d", "--",
                  "python3", "-V"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->command, Command::kExec);
  EXPECT_THAT(o->ids, ElementsAre("sb-0123456789abcdef"));
  EXPECT_EQ(o->timeout, absl::Seconds(30));
  EXPECT_TRUE(o->background);
  EXPECT_THAT(o->argv, ElementsAre("python3", "-V"));

  auto plain = Parse({"exec", "sb-1", "uname", "-a"});
  ASSERT_TRUE(plain.ok()) << plain.status();
  EXPECT_THAT(plain->ids, ElementsAre("sb-1"));
  EXPECT_THAT(plain->argv, ElementsAre("uname", "-a"));
}

TEST(ArgsTest, CreateFlags) {
  auto o = Parse({"--json", "create", "-t", "base", "--idle-timeout", "5m",
                  "--ttl", "2h", "-l", "team=ml", "--label", "job=7", "-e",
                  "X=1", "--idempotency-key", "k1"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_TRUE(o->json);
  EXPECT_EQ(o->template_name, "base");
  EXPECT_EQ(o->idle_timeout, absl::Minutes(5));
  EXPECT_EQ(o->ttl, absl::Hours(2));
  EXPECT_THAT(o->labels, UnorderedElementsAre(Pair("team", "ml"), Pair("job", "7")));
  EXPECT_THAT(o->env, UnorderedElementsAre(Pair("X", "1")));
  EXPECT_EQ(o->idempotency_key, "k1");
}

TEST(ArgsTest, GlobalFlagsBeforeOrAfterTheCommandAndFromTheEnvironment) {
  auto o = Parse({"--addr", "tcp://h:7000", "list", "--token", "t0k", "--json"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_EQ(o->addr, "tcp://h:7000");
  EXPECT_TRUE(o->addr_explicit);
  EXPECT_EQ(o->token, "t0k");
  EXPECT_TRUE(o->json);

  auto env = Parse({"ps"}, {{"SBX_ADDR", "unix:///tmp/s.sock"},
                            {"SBX_TOKEN", "secret"},
                            {"SBX_STATE_DIR", "/tmp/state"}});
  ASSERT_TRUE(env.ok()) << env.status();
  EXPECT_EQ(env->command, Command::kList);
  EXPECT_EQ(env->addr, "unix:///tmp/s.sock");
  EXPECT_TRUE(env->addr_explicit);
  EXPECT_EQ(env->token, "secret");
  EXPECT_EQ(env->state_dir, "/tmp/state");

  auto dflt = Parse({"list"});
  ASSERT_TRUE(dflt.ok());
  EXPECT_EQ(dflt->addr, "unix:///run/sbx/sandboxd.sock");
  EXPECT_FALSE(dflt->addr_explicit);
}

TEST(ArgsTest, ListFilters) {
  auto o = Parse({"list", "-l", "a=b", "--state", "running,SLEEPING", "--state", "failed"});
  ASSERT_TRUE(o.ok()) << o.status();
  EXPECT_THAT(o->labels, UnorderedElementsAre(Pair("a", "b")));
  EXPECT_THAT(o->states, ElementsAre(sbx::v1::RUNNING, sbx::v1::SLEEPING, sbx::v1::FAILED));
  EXPECT_THAT(Error({"list", "--state", "asleep"}), HasSubstr("unknown state \"asleep\""));
}

TEST(ArgsTest, FileCommands) {
  auto cp = Parse({"cp", "./a.txt", "sb-1:/root/a.txt"});
  ASSERT_TRUE(cp.ok()) << cp.status();
  EXPECT_EQ(cp->src, "./a.txt");
  EXPECT_EQ(cp->dst, "sb-1:/root/a.txt");

  auto ls = Parse({"ls", "sb-1"});
  ASSERT_TRUE(ls.ok());
  EXPECT_EQ(ls->path, "/");
  auto ls2 = Parse({"ls", "sb-1", "/etc"});
  ASSERT_TRUE(ls2.ok());
  EXPECT_EQ(ls2->path, "/etc");

  auto rmf = Parse({"rmfile", "sb-1", "-r", "/tmp/d"});
  ASSERT_TRUE(rmf.ok()) << rmf.status();
  EXPECT_TRUE(rmf->recursive);
  EXPECT_EQ(rmf->path, "/tmp/d");

  auto stat = Parse({"stat", "sb-1", "/etc/hosts"});
  ASSERT_TRUE(stat.ok());
  EXPECT_EQ(stat->command, Command::kStat);
  auto cat = Parse({"cat", "sb-1", "/etc/hosts"});
  ASSERT_TRUE(cat.ok());
  EXPECT_EQ(cat->command, Command::kCat);
}

TEST(ArgsTest, SandboxAndTemplateVerbs) {
  auto rm = Parse({"rm", "sb-1", "sb-2"});
  ASSERT_TRUE(rm.ok());
  EXPECT_EQ(rm->command, Command::kRm);
  EXPECT_THAT(rm->ids, ElementsAre("sb-1", "sb-2"));
  for (const char* verb : {"inspect", "sleep", "wake"}) {
    auto o = Parse({verb, "sb-1"});
    ASSERT_TRUE(o.ok()) << verb;
    EXPECT_THAT(o->ids, ElementsAre("sb-1"));
  }
  auto build = Parse({"template", "build", "py", "--kernel", "/k", "--rootfs",
                      "/r", "--cpus", "2", "--memory", "512", "--disk", "4G"});
  ASSERT_TRUE(build.ok()) << build.status();
  EXPECT_EQ(build->command, Command::kTemplateBuild);
  EXPECT_THAT(build->ids, ElementsAre("py"));
  EXPECT_EQ(build->kernel, "/k");
  EXPECT_EQ(build->rootfs, "/r");
  EXPECT_EQ(build->disk_mib, 4096u);
  auto tls = Parse({"template", "ls"});
  ASSERT_TRUE(tls.ok());
  EXPECT_EQ(tls->command, Command::kTemplateLs);
  auto trm = Parse({"template", "rm", "py"});
  ASSERT_TRUE(trm.ok());
  EXPECT_EQ(trm->command, Command::kTemplateRm);
}

TEST(ArgsTest, HelpOnEveryCommand) {
  for (std::vector<std::string> args :
       std::vector<std::vector<std::string>>{{"--help"}, {"run", "--help"},
                                             {"exec", "-h"}, {"cp", "--help"},
                                             {"template", "build", "--help"},
                                             {"template", "--help"},
                                             {"help", "list"}}) {
    auto o = Parse(args);
    ASSERT_TRUE(o.ok()) << args[0];
    EXPECT_TRUE(o->help) << args[0];
    EXPECT_THAT(Usage(o->command), HasSubstr("usage: sandboxctl")) << args[0];
  }
  // --help after `--` is the command's.
  auto o = Parse({"run", "--", "prog", "--help"});
  ASSERT_TRUE(o.ok());
  EXPECT_FALSE(o->help);
  EXPECT_THAT(o->argv, ElementsAre("prog", "--help"));
  EXPECT_THAT(Usage(Command::kRun), HasSubstr("--keep"));
  EXPECT_THAT(Usage(Command::kNone), HasSubstr("rmfile ID [-r] PATH"));
}

TEST(ArgsTest, BadInputIsAOneLineUsageError) {
  EXPECT_EQ(Error({}), "missing command");
  EXPECT_EQ(Error({"frobnicate"}), "unknown command \"frobnicate\"");
  EXPECT_EQ(Error({"list", "--frob"}), "list: unknown flag --frob");
  EXPECT_EQ(Error({"exec"}), "exec: missing sandbox ID");
  EXPECT_THAT(Error({"exec", "sb-1"}), HasSubstr("missing the command"));
  EXPECT_THAT(Error({"run"}), HasSubstr("missing the command"));
  EXPECT_THAT(Error({"run", "--timeout", "soon", "--", "true"}),
              HasSubstr("--timeout: bad duration \"soon\""));
  EXPECT_THAT(Error({"run", "--timeout"}), HasSubstr("--timeout: missing value"));
  EXPECT_EQ(Error({"run", "-e", "NOEQUALS", "--", "true"}),
            "-e: expected KEY=VALUE, got \"NOEQUALS\"");
  EXPECT_THAT(Error({"create", "-l", "=v"}), HasSubstr("expected KEY=VALUE"));
  EXPECT_THAT(Error({"run", "--cpus", "0", "true"}), HasSubstr("--cpus: expected a positive number"));
  EXPECT_THAT(Error({"run", "--memory", "lots", "true"}), HasSubstr("--memory"));
  EXPECT_EQ(Error({"inspect"}), "inspect: missing sandbox ID");
  EXPECT_EQ(Error({"cp", "a"}), "cp: missing SRC and DST");
  EXPECT_EQ(Error({"stat", "sb-1"}), "stat: missing PATH");
  EXPECT_EQ(Error({"list", "extra"}), "list: unexpected argument \"extra\"");
  EXPECT_THAT(Error({"template"}), HasSubstr("missing subcommand"));
  EXPECT_THAT(Error({"template", "bake"}), HasSubstr("unknown subcommand \"bake\""));
  EXPECT_THAT(Error({"--keep", "run", "true"}), HasSubstr("unknown flag --keep"));
  // rm deletes sandboxes; a path there is a mistake, refused before any call.
  EXPECT_THAT(Error({"rm", "sb-1", "/tmp/x"}), HasSubstr("rmfile ID PATH"));
  EXPECT_THAT(Error({"rm", "sb-1:/tmp/x"}), HasSubstr("is not a sandbox id"));
  EXPECT_THAT(Error({"list", "--json=yes"}), HasSubstr("--json takes no value"));
}

TEST(ArgsTest, UsageErrorNamesTheCommandForItsUsage) {
  Command c = Command::kNone;
  absl::StatusOr<Options> o =
      ParseArgs({"exec", "--bogus"}, [](const char*) -> const char* { return nullptr; }, &c);
  EXPECT_FALSE(o.ok());
  EXPECT_EQ(c, Command::kExec);
}

TEST(ArgsTest, Durations) {
  EXPECT_EQ(*ParseDurationFlag("30s"), absl::Seconds(30));
  EXPECT_EQ(*ParseDurationFlag("5m"), absl::Minutes(5));
  EXPECT_EQ(*ParseDurationFlag("1h30m"), absl::Minutes(90));
  EXPECT_EQ(*ParseDurationFlag("45"), absl::Seconds(45));
  EXPECT_EQ(*ParseDurationFlag("0"), absl::ZeroDuration());
  EXPECT_FALSE(ParseDurationFlag("-5s").ok());
  EXPECT_FALSE(ParseDurationFlag("5 minutes").ok());
  EXPECT_FALSE(ParseDurationFlag("inf").ok());
}

TEST(ArgsTest, Sizes) {
  EXPECT_EQ(*ParseMib("512"), 512u);
  EXPECT_EQ(*ParseMib("512M"), 512u);
  EXPECT_EQ(*ParseMib("512MiB"), 512u);
  EXPECT_EQ(*ParseMib("2G"), 2048u);
  EXPECT_EQ(*ParseMib("2GiB"), 2048u);
  EXPECT_FALSE(ParseMib("0").ok());
  EXPECT_FALSE(ParseMib("1.5G").ok());
  EXPECT_FALSE(ParseMib("G").ok());
}

}  // namespace
}  // namespace sbx::ctl
