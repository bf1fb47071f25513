// Trace files, metadata, JSON/tokenizer reading, the capture spec.
#include "helpers.h"

#include <attnscope/json.h>
#include <attnscope/safetensors.h>
#include <attnscope/vocab.h>

#include <cstdio>

using attnscope::CaptureSpec;
using attnscope::Model;
using attnscope::Trace;

CATCH_TEST_CASE("trace save/load round trip keeps every field", "[trace]") {
  auto ref = test::load_ref("toy_hf_eager");
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  CaptureSpec spec = CaptureSpec::all_aggregates();
  spec.heads = {{1, 2}};
  spec.from_tokens = {-2};
  auto t = model.run(ref.ids, spec, ref.mask);
  const std::string path = test::fixture("roundtrip_trace.safetensors");
  t.save(path);
  auto u = Trace::load(path);
  CATCH_CHECK(u.input_ids.equal(t.input_ids));
  CATCH_CHECK(u.attention_mask.equal(t.attention_mask));
  CATCH_CHECK(u.entropy.allclose(t.entropy, 0, 0, /*equal_nan=*/true));  // NaN at padding
  CATCH_CHECK(u.topk_ids.equal(t.topk_ids));
  CATCH_CHECK(u.names() == t.names());
  for (const auto& n : t.names()) CATCH_CHECK(u.get(n).allclose(t.get(n), 0, 0, /*equal_nan=*/true));
  CATCH_CHECK(u.spec.to_json() == t.spec.to_json());
  CATCH_CHECK(u.n_layers == 3);
  CATCH_CHECK(u.n_heads == 4);
  CATCH_CHECK(u.layer_paths == t.layer_paths);
  CATCH_CHECK(u.tokens == t.tokens);
  CATCH_CHECK(u.tokens.size() == 24);
  std::remove(path.c_str());
}

CATCH_TEST_CASE("metadata from attnscope.json, inferred otherwise, and said so", "[model]") {
  auto with = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  CATCH_CHECK(with.info().n_layers == 3);
  CATCH_CHECK(with.info().vocab_size == 64);
  CATCH_CHECK(with.info().family == "toy");
  CATCH_CHECK(with.info().inferred.empty());
  auto without = Model::load(test::fixture("toy_gpt2.pt"), "cpu");
  CATCH_CHECK(without.info().n_layers == 3);  // attention sites in the graph
  CATCH_CHECK(without.info().n_heads == 4);   // from captured shapes of the dry run at load
  CATCH_CHECK(without.info().causal);
  auto ref = test::load_ref("toy_gpt2");
  without.run(ref.ids, CaptureSpec::all_aggregates(), ref.mask);
  CATCH_CHECK(without.info().vocab_size == 64);
  auto d = without.describe();
  CATCH_CHECK(d.find("inferred") != std::string::npos);
  CATCH_CHECK(d.find("num_heads (captured shapes)") != std::string::npos);
  CATCH_CHECK(d.find("site 2: softmax") != std::string::npos);
  CATCH_CHECK(d.find("causal: yes (a dry run attends only to earlier tokens)") != std::string::npos);
  auto enc = Model::load(test::fixture("toy_bidirectional.pt"), "cpu");
  CATCH_CHECK_FALSE(enc.info().causal);
  CATCH_CHECK(enc.describe().find("causal: no (a dry run attends to later tokens)") != std::string::npos);
}

CATCH_TEST_CASE("tokenizer.json id -> token strings, with \\u escapes and surrogate pairs", "[vocab]") {
  auto model = Model::load(test::fixture("toy_hf_eager.pt"), "cpu");
  CATCH_REQUIRE_FALSE(model.vocab().empty());
  CATCH_CHECK(model.vocab().token(5) == "\xC4\xA0hello");          // Ġhello
  CATCH_CHECK(model.vocab().token(1) == "caf\xC3\xA9 \xF0\x9F\x98\x80");  // café 😀
  CATCH_CHECK(model.vocab().token(0) == "<|pad|>");
  CATCH_CHECK(model.vocab().token(9999) == "<9999>");
  CATCH_CHECK_FALSE(model.tokenizer_json().empty());
}

CATCH_TEST_CASE("JSON reader", "[json]") {
  using attnscope::json::parse;
  auto v = parse(R"({"a": [1, 2.5, -3e2], "b": {"c": "x\ny\"z"}, "t": true, "n": null})");
  CATCH_CHECK(v.find("a")->arr[2].num == -300);
  CATCH_CHECK(v.find("b")->get_string("c", "") == "x\ny\"z");
  CATCH_CHECK(v.get_bool("t", false));
  CATCH_CHECK(v.find("n")->is_null());
  CATCH_CHECK(v.get_int("missing", 7) == 7);
  CATCH_CHECK(parse(attnscope::json::quote("tab\there \x01")).str == "tab\there \x01");
  auto err = test::error_of([] { parse("{\"a\": [1, 2}", "attnscope.json"); });
  CATCH_CHECK(err.find("attnscope.json: malformed JSON at byte") != std::string::npos);
}

CATCH_TEST_CASE("capture spec JSON round trip", "[spec]") {
  CaptureSpec s;
  s.heads = {{0, 1}, {2, 3}};
  s.layer_maps = {4};
  s.layer_map_head = 2;
  s.layers = {1, 0};
  s.received = true;
  s.from_tokens = {-1, 3};
  s.sink_tokens = 4;
  s.top_k = 0;
  s.temperature = 0.5;
  s.to_cpu = false;
  s.chunk_elements = 123;
  auto u = CaptureSpec::from_json(s.to_json());
  CATCH_CHECK(u.to_json() == s.to_json());
  CATCH_CHECK(u.heads == s.heads);
}

CATCH_TEST_CASE("nothing requested: no attention work, entropy still computed", "[model]") {
  auto ref = test::load_ref("toy_sdpa_causal");
  auto model = Model::load(test::fixture("toy_sdpa_causal.pt"), "cpu");
  CaptureSpec spec;
  auto t = model.run(ref.ids, spec);
  CATCH_CHECK(t.captures.empty());
  CATCH_CHECK(t.n_layers == 3);
  CATCH_CHECK(t.entropy.sizes() == torch::IntArrayRef({2, 12}));
  // A 1-D id tensor is one sequence.
  auto one = model.run(ref.ids[0], spec);
  CATCH_CHECK(one.input_ids.sizes() == torch::IntArrayRef({1, 12}));
}

CATCH_TEST_CASE("safetensors writer/reader: dtypes, shapes, metadata with escapes", "[trace]") {
  attnscope::SafetensorsFile f;
  f.tensors["a/b"] = torch::arange(6, torch::kFloat).view({2, 3});
  f.tensors["ids"] = torch::tensor({1, -2, 3}, torch::kLong);
  f.tensors["flags"] = torch::tensor({true, false});
  f.tensors["h"] = torch::tensor({0.5, 1.5}).to(torch::kBFloat16);
  f.tensors["scalar"] = torch::tensor(3.0);
  f.metadata["note"] = "quote \" newline \n";
  const std::string path = test::fixture("roundtrip.safetensors");
  attnscope::write_safetensors(path, f);
  auto g = attnscope::read_safetensors(path);
  CATCH_CHECK(g.metadata == f.metadata);
  CATCH_REQUIRE(g.tensors.size() == f.tensors.size());
  for (const auto& kv : f.tensors) CATCH_CHECK(g.tensors[kv.first].equal(kv.second));
  std::remove(path.c_str());
}

CATCH_TEST_CASE("token strings that are not UTF-8 become \\xNN text", "[trace]") {
  using attnscope::json::valid_utf8;
  CATCH_CHECK(valid_utf8("plain ␣ text é 𝄞") == "plain ␣ text é 𝄞");           // well-formed: unchanged
  CATCH_CHECK(valid_utf8(std::string("a\xff" "b")) == "a\\xffb");                 // a byte that starts nothing
  CATCH_CHECK(valid_utf8(std::string("\xc3(")) == "\\xc3(");                       // a lead byte without its pair
  CATCH_CHECK(valid_utf8(std::string("\xc0\xaf")) == "\\xc0\\xaf");                // overlong '/'
  CATCH_CHECK(valid_utf8(std::string("\xed\xa0\x80")) == "\\xed\\xa0\\x80");       // a UTF-16 surrogate
  CATCH_CHECK(valid_utf8(std::string("\xf4\x90\x80\x80")) == "\\xf4\\x90\\x80\\x80");  // past U+10FFFF
  CATCH_CHECK(valid_utf8(std::string("\xe2\x82")) == "\\xe2\\x82");                // truncated at the end
}
