// The strict JSON reader: what it accepts, and the byte offset it reports for what it rejects.
#include "check.h"
#include "io/json.h"

using medrt::json::ParseError;
using medrt::json::Type;
using medrt::json::parse;

namespace {
size_t error_offset(const std::string& text) {
  try {
    parse(text);
  } catch (const ParseError& e) {
    return e.offset();
  }
  return size_t(-1);
}
}  // namespace

TEST(parses_nested_document) {
  auto v = parse(R"( {"a": [1, -2.5e3, true, false, null], "b": {"c": "x"}} )");
  CHECK(v.type == Type::Object);
  const auto* a = v.find("a");
  CHECK(a && a->type == Type::Array && a->array.size() == 5);
  CHECK(a->array[0].integer && *a->array[0].integer == 1);
  CHECK_NEAR(a->array[1].number, -2500.0, 0.0);
  CHECK(!a->array[1].integer);
  CHECK(a->array[2].boolean && !a->array[3].boolean && a->array[4].is_null());
  CHECK(v.find("b")->find("c")->string == "x");
  CHECK(v.find("missing") == nullptr);
}

TEST(keeps_large_integers_exact) {
  auto v = parse("[9007199254740993, 123456789012345678]");
  CHECK(*v.array[0].integer == 9007199254740993ll);
  CHECK(*v.array[1].integer == 123456789012345678ll);
  auto big = parse("123456789012345678901234567890");  // beyond int64: a double only
  CHECK(!big.integer && big.number > 1e29);
}

TEST(decodes_escapes_and_utf8) {
  auto v = parse(R"("a\"\\\/\b\f\n\r\t\u00e9\ud83d\ude00")");
  CHECK(v.string == "a\"\\/\b\f\n\r\t\xc3\xa9\xf0\x9f\x98\x80");
  CHECK(parse("\"\xc3\xa9\"").string == "\xc3\xa9");
}

TEST(reports_offsets_of_errors) {
  CHECK(error_offset("{\"a\": 1,}") == 8);
  CHECK(error_offset("[1 2]") == 3);
  CHECK(error_offset("{\"a\" 1}") == 5);
  CHECK(error_offset("[1] x") == 4);
  CHECK(error_offset("") == 0);
  CHECK(error_offset("\"abc") == 4);
  CHECK(error_offset("nul") == 0);
  CHECK(error_offset("{\"a\": 1, \"a\": 2}") == 9);  // duplicate key, at the second key
}

TEST(rejects_what_json_forbids) {
  for (const char* bad : {"01", "1.", ".5", "-", "1e", "+1", "NaN", "Infinity", "'a'",
                          "[1,]", "{a: 1}", "\"\\x\"", "\"\\ud800\"", "\"\\udc00\"",
                          "\"\t\"", "\"\xff\"", "\"\xc0\x80\"", "\"\xed\xa0\x80\"", "1e400",
                          "// c\n1", "[1] [2]", "tru"}) {
    bool threw = false;
    try {
      parse(bad);
    } catch (const ParseError&) {
      threw = true;
    }
    if (!threw) std::fprintf(stderr, "accepted invalid JSON: %s\n", bad);
    CHECK(threw);
  }
}

TEST(limits_nesting_depth) {
  std::string deep(100000, '[');
  CHECK_THROWS(ParseError, parse(deep), "nesting");
  std::string ok = std::string(100, '[') + std::string(100, ']');
  CHECK(parse(ok).type == Type::Array);
}

TEST(underflow_reads_as_zero) {
  CHECK(parse("1e-400").number == 0.0);
  CHECK(parse("-0.0").number == 0.0);
}

TEST(value_count_is_bounded_by_the_document_size) {
  // Each value takes far more memory than its two bytes of text: past one value per 8 bytes
  // (plus 4096) the document is refused.
  std::string small = "[";
  for (int i = 0; i < 10000; ++i) small += "0,";
  small += "0]";
  CHECK(medrt::json::max_values_for(small.size()) == 4096 + small.size() / 8);
  bool refused = false;
  try {
    parse(small);
  } catch (const medrt::json::ParseError& e) {
    refused = std::string(e.what()).find("more than 6596 values in a 20003-byte document") !=
              std::string::npos;
    if (!refused) std::fprintf(stderr, "message: %s\n", e.what());
  }
  CHECK(refused);
  // The same values padded with whitespace, as a pretty-printed file would be, parse.
  std::string padded = "[";
  for (int i = 0; i < 10000; ++i) padded += "0,      ";
  padded += "0]";
  CHECK(parse(padded).array.size() == 10001);
  CHECK(medrt::json::max_values_for(size_t(1) << 40) == medrt::json::kMaxValues);
}
