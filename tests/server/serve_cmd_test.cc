// The `qserve serve` process (the binary built beside this test): it starts on a free port, serves a stream, and
// on SIGTERM in the middle of that stream completes the response (finish_reason "abort" or "length", then
// "data: [DONE]"), stops listening and exits 0 within its --shutdown-grace. Skips when the binary was not built.
#include <gtest/gtest.h>
#include <signal.h>
#include <sys/wait.h>

#include <filesystem>

#include "common/test_util.h"
#include "server/server_test_util.h"

namespace qs::server {
namespace {

int free_port() {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  ::bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  ::close(fd);
  return ntohs(a.sin_port);
}

TEST(ServeCommandTest, SigtermFinishesTheStreamAndExitsZero) {
  QS_REQUIRE_DATA("models/qs-llama-tiny");
  const auto exe = std::filesystem::read_symlink("/proc/self/exe").parent_path() / "qserve";
  if (!std::filesystem::exists(exe)) GTEST_SKIP() << "qserve binary not built: " << exe;
  const int port = free_port();
  const std::string model = qs::test::data_path("models/qs-llama-tiny");
  const std::string port_s = std::to_string(port);
  const pid_t pid = fork();
  ASSERT_GE(pid, 0);
  if (pid == 0) {
    execl(exe.c_str(), "qserve", "serve", "--model", model.c_str(), "--port", port_s.c_str(), "--served-model-name",
          "tiny", "--kv-pages", "64", "--shutdown-grace", "1", static_cast<char*>(nullptr));
    _exit(127);
  }
  bool up = false;
  for (int i = 0; i < 600 && !up; ++i) {
    up = test::http(port, "GET", "/health", "", "").status == 200;
    if (!up) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  if (!up) kill(pid, SIGKILL);
  ASSERT_TRUE(up) << "qserve serve did not come up on port " << port;

  test::RawConn c(port);
  c.send_all(test::request_text("POST", "/v1/completions",
                                nlohmann::json{{"model", "tiny"}, {"prompt", "Once"}, {"max_tokens", 1500},
                                               {"temperature", 0}, {"stream", true}}
                                    .dump()));
  std::string raw;
  while (raw.find("data: ") == std::string::npos && c.read_some(raw, 5000)) {
  }
  ASSERT_NE(raw.find("data: "), std::string::npos) << raw;
  const auto t0 = std::chrono::steady_clock::now();
  ASSERT_EQ(kill(pid, SIGTERM), 0);
  raw += c.read_to_close(30000);
  int status = -1;
  pid_t w = 0;
  while (w == 0 && std::chrono::steady_clock::now() - t0 < std::chrono::seconds(30)) {
    w = waitpid(pid, &status, WNOHANG);
    if (w == 0) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  if (w == 0) kill(pid, SIGKILL);
  ASSERT_EQ(w, pid) << "qserve serve did not exit within 30 s of SIGTERM";
  const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  ASSERT_TRUE(WIFEXITED(status));
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_LT(s, 10.0);  // grace 1 s, then the aborts and the last bytes
  const auto data = test::sse_data(test::parse_reply(raw).body);
  ASSERT_GE(data.size(), 2u);
  EXPECT_EQ(data.back(), "[DONE]");
  const auto last = nlohmann::json::parse(data[data.size() - 2]);
  const std::string finish = last["choices"][0]["finish_reason"];
  EXPECT_TRUE(finish == "abort" || finish == "length") << finish;
  EXPECT_FALSE(test::RawConn(port).ok()) << "still listening after exit";
  std::printf("SIGTERM -> exit 0 in %.2f s, stream finished with '%s'\n", s, finish.c_str());
}

}  // namespace
}  // namespace qs::server
