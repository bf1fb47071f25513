#include <attnscope/generation_info.h>

#include <attnscope/json.h>

#include <c10/util/Exception.h>

#include <sstream>

namespace attnscope {

namespace {
template <class T>
std::string or_null(const std::optional<T>& v) {
  if (!v) return "null";
  std::ostringstream o;
  o.precision(17);
  o << *v;
  return o.str();
}

std::optional<double> opt_double(const json::Value& v, const std::string& key) {
  const json::Value* x = v.find(key);
  if (!x || x->is_null()) return std::nullopt;
  return v.get_double(key, 0.0);
}

Fork fork_of(const json::Value& f, const std::string& what) {
  TORCH_CHECK_VALUE(f.is_object(), what, ": 'fork' must be an object, got ", f.describe());
  Fork k;
  k.position = f.get_int("position", 0, 0);
  k.chosen_id = f.get_int("chosen_id", -1, -1);
  k.forced_id = f.get_int("forced_id", -1, -1);
  k.chosen = f.get_string("chosen", "");
  k.forced = f.get_string("forced", "");
  k.chosen_p = opt_double(f, "chosen_p");
  k.forced_p = opt_double(f, "forced_p");
  if (const json::Value* r = f.find("rank"); r && !r->is_null()) k.rank = r->as_int(what + " 'fork' 'rank'", 1);
  return k;
}
}  // namespace

std::string GenerationInfo::to_json() const {
  std::ostringstream g;
  g.precision(17);
  g << "{\"temperature\": " << temperature << ", \"top_k\": " << top_k << ", \"top_p\": " << top_p
    << ", \"seed\": " << seed << ", \"max_new_tokens\": " << max_new_tokens
    << ", \"stop_ids\": " << json::int_array(stop_ids) << ", \"kv_cache\": " << (kv_cache ? "true" : "false")
    << ", \"prefix_cached\": " << prefix_cached << ", \"steps\": " << steps << ", \"stop_reason\": [";
  for (size_t b = 0; b < stop_reason.size(); ++b) g << (b ? ", " : "") << json::quote(stop_reason[b]);
  g << "]";
  if (fork)
    g << ", \"fork\": {\"position\": " << fork->position << ", \"chosen_id\": " << fork->chosen_id
      << ", \"chosen\": " << json::quote(fork->chosen) << ", \"chosen_p\": " << or_null(fork->chosen_p)
      << ", \"forced_id\": " << fork->forced_id << ", \"forced\": " << json::quote(fork->forced)
      << ", \"forced_p\": " << or_null(fork->forced_p) << ", \"rank\": " << or_null(fork->rank) << "}";
  g << "}";
  return g.str();
}

GenerationInfo GenerationInfo::from_json(const std::string& text, const std::string& what) {
  const json::Value v = json::parse(text, what);
  TORCH_CHECK_VALUE(v.is_object(), what, ": expected a JSON object");
  GenerationInfo g;
  g.temperature = v.get_double("temperature", 0.0);
  g.top_k = v.get_int("top_k", 0, 0);
  g.top_p = v.get_double("top_p", 1.0);
  g.seed = v.get_int("seed", 0, 0);
  g.max_new_tokens = v.get_int("max_new_tokens", 0, 0);
  if (const json::Value* s = v.get_array("stop_ids"))
    for (size_t i = 0; i < s->arr.size(); ++i) g.stop_ids.push_back(s->arr[i].as_int(what + " 'stop_ids'", 0));
  g.kv_cache = v.get_bool("kv_cache", false);
  g.prefix_cached = v.get_int("prefix_cached", 0, 0);
  g.steps = v.get_int("steps", 0, 0);
  if (const json::Value* r = v.get_array("stop_reason"))
    for (const auto& x : r->arr) {
      TORCH_CHECK_VALUE(x.is_string(), what, ": 'stop_reason' must hold strings, got ", x.describe());
      g.stop_reason.push_back(x.str);
    }
  if (const json::Value* f = v.find("fork"); f && !f->is_null()) g.fork = fork_of(*f, what);
  return g;
}

}  // namespace attnscope
