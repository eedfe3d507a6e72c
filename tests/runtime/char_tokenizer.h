// A tokenizer for the FakeExecutor's 97-token vocabulary, for runtime tests that need text: token i < 94 decodes
// to the single character '!' + i (printable ASCII), 94..96 to "<x94>".."<x96>"; a bare BPE (no merges, no
// normalizer or decoder), so text <-> ids is one character per token.
#pragma once

#include <memory>
#include <nlohmann/json.hpp>
#include <string>

#include "tokenizer/tokenizer.h"

namespace qs::runtime::testing {

inline std::shared_ptr<const tokenizer::Tokenizer> char_tokenizer() {
  nlohmann::json vocab = nlohmann::json::object();
  for (int i = 0; i < 97; ++i) vocab[i < 94 ? std::string(1, char('!' + i)) : "<x" + std::to_string(i) + ">"] = i;
  nlohmann::json j;
  j["model"] = {{"type", "BPE"}, {"vocab", vocab}, {"merges", nlohmann::json::array()}};
  return std::make_shared<const tokenizer::Tokenizer>(tokenizer::Tokenizer::from_json(j.dump()));
}

}  // namespace qs::runtime::testing
