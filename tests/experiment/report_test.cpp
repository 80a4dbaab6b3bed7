#include "dca/core/random.hpp"
#include "dca/io/csv.hpp"
#include "dca/experiment/stats.hpp"
#include "dca/io/svg.hpp"
#include "support.hpp"

#include <doctest/doctest.h>

#include <algorithm>
#include <bit>
#include <cctype>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <map>
#include <set>
#include <sstream>
#include <string>
#include <string_view>
#include <vector>

namespace {

namespace fs = std::filesystem;
using dca::index_t;
using dca::test::TempDir;

std::string read_text(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

std::vector<std::string> file_names(const fs::path& directory) {
  std::vector<std::string> names;
  for (const fs::directory_entry& entry : fs::directory_iterator(directory)) names.push_back(entry.path().filename());
  std::sort(names.begin(), names.end());
  return names;
}

bool same_bits(double a, double b) { return std::bit_cast<std::uint64_t>(a) == std::bit_cast<std::uint64_t>(b); }

bool is_name_char(char c) {
  return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == ':' || c == '.';
}

// The length of a valid entity reference starting at xml[at] == '&' (the five predefined ones or
// a numeric one), or 0.
std::size_t entity_length(std::string_view xml, std::size_t at) {
  const std::size_t end = xml.find(';', at);
  if (end == std::string_view::npos || end - at > 10) return 0;
  const std::string_view name = xml.substr(at + 1, end - at - 1);
  static const std::set<std::string_view> predefined = {"amp", "lt", "gt", "quot", "apos"};
  const bool numeric = name.size() > 1 && name[0] == '#' &&
                       std::all_of(name.begin() + 1, name.end(), [](char c) { return std::isxdigit(c) || c == 'x'; });
  return predefined.contains(name) || numeric ? end - at + 1 : 0;
}

// "" when `xml` is well-formed by these rules, else the first problem: one root element; every
// element closed in order or self-closed; attributes name="value", unique per element, values
// without '<'; '&' only as an entity reference; no control characters but tab and line breaks;
// no text outside the root.
std::string xml_problem(std::string_view xml) {
  std::vector<std::string> open;
  index_t roots = 0;
  std::size_t i = 0;
  const auto problem = [&](const std::string& what) { return what + " at byte " + std::to_string(i); };
  while (i < xml.size()) {
    const char c = xml[i];
    if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r')
      return problem("control character");
    if (c == '&') {
      const std::size_t length = entity_length(xml, i);
      if (length == 0) return problem("raw '&'");
      i += length;
      continue;
    }
    if (c == '>') return problem("stray '>'");
    if (c != '<') {
      if (open.empty() && !std::isspace(static_cast<unsigned char>(c))) return problem("text outside the root");
      ++i;
      continue;
    }
    if (xml.substr(i).starts_with("</")) {
      const std::size_t end = xml.find('>', i);
      if (end == std::string_view::npos) return problem("unterminated end tag");
      const std::string name(xml.substr(i + 2, end - i - 2));
      if (open.empty() || open.back() != name) return problem("end tag </" + name + "> does not match");
      open.pop_back();
      i = end + 1;
      continue;
    }
    ++i;
    const std::size_t name_begin = i;
    while (i < xml.size() && is_name_char(xml[i])) ++i;
    if (i == name_begin) return problem("'<' without an element name");
    const std::string name(xml.substr(name_begin, i - name_begin));
    if (open.empty() && ++roots > 1) return problem("second root element <" + name + ">");
    std::set<std::string> attributes;
    for (;;) {
      while (i < xml.size() && std::isspace(static_cast<unsigned char>(xml[i]))) ++i;
      if (i >= xml.size()) return problem("unterminated tag <" + name);
      if (xml.substr(i).starts_with("/>")) {
        i += 2;
        break;
      }
      if (xml[i] == '>') {
        open.push_back(name);
        ++i;
        break;
      }
      const std::size_t attribute_begin = i;
      while (i < xml.size() && is_name_char(xml[i])) ++i;
      const std::string attribute(xml.substr(attribute_begin, i - attribute_begin));
      if (attribute.empty()) return problem("bad character in tag <" + name);
      if (!attributes.insert(attribute).second) return problem("duplicate attribute " + attribute);
      if (xml.substr(i).size() < 2 || xml[i] != '=' || xml[i + 1] != '"')
        return problem("unquoted attribute " + attribute);
      i += 2;
      const std::size_t value_end = xml.find('"', i);
      if (value_end == std::string_view::npos) return problem("unterminated attribute " + attribute);
      for (; i < value_end; ++i) {
        if (xml[i] == '<') return problem("'<' in attribute " + attribute);
        if (xml[i] == '&' && entity_length(xml, i) == 0) return problem("raw '&' in attribute " + attribute);
      }
      ++i;
      if (i < xml.size() && !std::isspace(static_cast<unsigned char>(xml[i])) && xml[i] != '>' && xml[i] != '/')
        return problem("no space after attribute " + attribute);
    }
  }
  if (!open.empty()) return "element <" + open.back() + "> is never closed";
  if (roots != 1) return "no root element";
  return "";
}

index_t occurrences(std::string_view text, std::string_view needle) {
  index_t count = 0;
  for (std::size_t at = text.find(needle); at != std::string_view::npos; at = text.find(needle, at + 1)) ++count;
  return count;
}

// The numbers of the n-th ` attribute="..."` in `svg` (n from 0), split at spaces, commas and the
// path letters M, V, H, h.
std::vector<double> numbers_of(std::string_view svg, std::string_view attribute, index_t n = 0) {
  const std::string key = " " + std::string(attribute) + "=\"";
  std::size_t at = svg.find(key);
  for (index_t k = 0; k < n && at != std::string_view::npos; ++k) at = svg.find(key, at + 1);
  REQUIRE(at != std::string_view::npos);
  const std::size_t begin = at + key.size(), end = svg.find('"', begin);
  std::string text(svg.substr(begin, end - begin));
  for (char& c : text)
    if (c == ',' || c == 'M' || c == 'V' || c == 'H' || c == 'h') c = ' ';
  std::vector<double> numbers;
  std::istringstream in(text);
  for (double value; in >> value;) numbers.push_back(value);
  return numbers;
}

const std::vector<dca::ChartSeries> latent_series = {
    {"coprocessor", {{1, 0.21, 0.01}, {2, 0.23, 0.01}, {4, 0.25, 0.02}, {8, 0.27, 0.01}, {16, 0.30, 0.02}}},
    {"pause tokens", {{1, 0.20, 0}, {2, 0.20, 0.01}, {4, 0.21, 0.01}, {8, 0.21, 0.01}, {16, 0.22, 0.01}}},
    {"a<b & \"c\"", {{1, 0.19, 0.03}, {16, 0.19, 0.03}}}};

}  // namespace

TEST_CASE("CSV fields with commas, quotes and line breaks are quoted by RFC 4180 and read back unchanged") {
  CHECK(dca::format_csv({"name", "value"}, std::vector<dca::CsvRow>{{"a,b", "1"}, {"say \"hi\"", "2"}, {"x\ny", ""}}) ==
        "name,value\n\"a,b\",1\n\"say \"\"hi\"\"\",2\n\"x\ny\",\n");
  CHECK(dca::csv_quote("plain text") == "plain text");
  CHECK(dca::csv_quote("carriage\rreturn") == "\"carriage\rreturn\"");

  const dca::CsvRow header = {"variant", "note, with comma", "\"quoted\" name"};
  const std::vector<dca::CsvRow> rows = {{"full fine-tune", "first line\nsecond line", "\"\""},
                                         {"LoRA-64", "crlf\r\ninside", ""},
                                         {"", " spaced ", "h\xC3\xA9llo \xE2\x9C\x93"},
                                         {",", "\"", "\n"}};
  TempDir dir;
  const fs::path path = dir.path / "results.csv";
  dca::write_csv(path, header, rows);
  const dca::CsvTable table = dca::read_csv(path);
  CHECK(table.header == header);
  CHECK(table.rows == rows);
  CHECK(file_names(dir.path) == std::vector<std::string>{"results.csv"});  // no temporary file left behind

  // A lone empty field is written quoted, so its record is not a blank line.
  const std::vector<dca::CsvRow> single = {{""}, {"x"}, {""}};
  const std::string text = dca::format_csv({"only"}, single);
  CHECK(text == "only\n\"\"\nx\n\"\"\n");
  CHECK(dca::parse_csv(text).rows == single);
}

TEST_CASE("numbers are written in their shortest exact form and read back bit for bit") {
  CHECK(dca::csv_number(0.1) == "0.1");
  CHECK(dca::csv_number(1.0) == "1");
  CHECK(dca::csv_number(-0.0) == "-0");
  CHECK(dca::csv_number(1e300) == "1e+300");
  CHECK(dca::csv_number(0.1f) == "0.1");
  CHECK(dca::csv_number(std::numeric_limits<std::int64_t>::min()) == "-9223372036854775808");
  CHECK(dca::csv_number(std::uint64_t{18446744073709551615ULL}) == "18446744073709551615");
  CHECK(dca::parse_csv_number<float>(dca::csv_number(0.1f)) == 0.1f);

  std::vector<double> values = {0.1,
                                1.0 / 3,
                                -0.0,
                                3.141592653589793,
                                std::numeric_limits<double>::max(),
                                std::numeric_limits<double>::min(),
                                std::numeric_limits<double>::denorm_min(),
                                -1e-310,
                                std::numeric_limits<double>::infinity(),
                                -std::numeric_limits<double>::infinity()};
  dca::Rng rng(5);
  while (values.size() < 2000) {
    const double value = std::bit_cast<double>(rng.bits());
    if (std::isfinite(value)) values.push_back(value);
  }
  dca::CsvWriter writer({"index", "value"});
  for (std::size_t i = 0; i < values.size(); ++i) writer.row(i, values[i]);
  writer.row(values.size(), std::numeric_limits<double>::quiet_NaN());
  const dca::CsvTable table = dca::parse_csv(writer.text());
  REQUIRE(table.rows.size() == values.size() + 1);
  for (std::size_t i = 0; i < values.size(); ++i) {
    CAPTURE(table.rows[i][1]);
    CHECK(same_bits(dca::parse_csv_number(table.rows[i][1]), values[i]));
  }
  CHECK(std::isnan(dca::parse_csv_number(table.rows.back()[1])));

  CHECK_THROWS_WITH_AS(dca::parse_csv_number("0.5x"), doctest::Contains("'0.5x' is not a number"), dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::parse_csv_number(""), doctest::Contains("'' is not a number"), dca::FormatError);
}

TEST_CASE("CsvWriter mixes text and numbers under its header, rejects rows of the wrong width, and writes atomically") {
  dca::CsvWriter writer({"latents", "variant", "accuracy"});
  writer.row(8, "coprocessor", 0.25).row(std::int64_t{16}, std::string("pause, fixed"), 0.2f);
  writer.add_row({"32", "text", "0.5"});
  CHECK(writer.text() == "latents,variant,accuracy\n8,coprocessor,0.25\n16,\"pause, fixed\",0.2\n32,text,0.5\n");
  CHECK_THROWS_WITH_AS(writer.row(1, "two"), doctest::Contains("row 3 has 2 fields, but the header has 3"),
                       dca::ShapeError);
  CHECK(writer.rows().size() == 3);
  CHECK_THROWS_WITH_AS(dca::CsvWriter({}), doctest::Contains("the header has no columns"), dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::format_csv({"a", "b"}, std::vector<dca::CsvRow>{{"1", "2"}, {"3"}}),
                       doctest::Contains("row 1 has 1 fields, but the header has 2"), dca::ShapeError);

  TempDir dir;
  const fs::path path = dir.path / "accuracy.csv";
  {
    std::ofstream old(path);
    old << "stale";
  }
  writer.write(path);
  CHECK(read_text(path) == writer.text());
  CHECK(file_names(dir.path) == std::vector<std::string>{"accuracy.csv"});
  const dca::CsvTable table = dca::read_csv(path);
  CHECK(table.column("accuracy") == 2);
  CHECK(dca::parse_csv_number(table.rows[1][static_cast<std::size_t>(table.column("accuracy"))]) == 0.2);
  CHECK_THROWS_WITH_AS(table.column("loss"),
                       doctest::Contains("no column 'loss' (columns: 'latents', 'variant', 'accuracy')"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(writer.write(dir.path / "missing" / "x.csv"), doctest::Contains("missing"), dca::IoError);
}

TEST_CASE("parse_csv accepts CRLF and a missing final newline, and names the line of malformed input") {
  const dca::CsvTable crlf = dca::parse_csv("a,b\r\n1,\"2\r\n3\"\r\n4,\r\n");
  CHECK(crlf.header == dca::CsvRow{"a", "b"});
  CHECK(crlf.rows == std::vector<dca::CsvRow>{{"1", "2\r\n3"}, {"4", ""}});
  CHECK(dca::parse_csv("a,b\n1,2").rows == std::vector<dca::CsvRow>{{"1", "2"}});
  CHECK(dca::parse_csv("a,b\n\"\",\"\"\n").rows == std::vector<dca::CsvRow>{{"", ""}});
  CHECK(dca::parse_csv("x\n").rows.empty());

  CHECK_THROWS_WITH_AS(dca::parse_csv("a,b\n\"two\nlines\",1\n1,2,3\n", "runs.csv"),
                       doctest::Contains("runs.csv: line 4: 3 fields, but the header has 2"), dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::parse_csv("a,b\n1,2\n\"open,3\n"),
                       doctest::Contains("line 3: a quoted field is never closed"), dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::parse_csv("a,b\n\"1\"x,2\n"), doctest::Contains("line 2: 'x' follows a closing quote"),
                       dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::parse_csv("a,b\n1,2\"3\n"),
                       doctest::Contains("line 2: a double quote inside an unquoted field ('2\"3')"), dca::FormatError);
  CHECK(dca::parse_csv("a\n1\n\n2\n").rows ==
        std::vector<dca::CsvRow>{{"1"}, {""}, {"2"}});  // a blank line: one empty field
  CHECK_THROWS_WITH_AS(dca::parse_csv("a,b\n1,2\n\n3,4\n"), doctest::Contains("line 3: 1 fields, but the header has 2"),
                       dca::FormatError);
  CHECK_THROWS_WITH_AS(dca::parse_csv(""), doctest::Contains("empty, there is no header"), dca::FormatError);
  TempDir dir;
  CHECK_THROWS_AS(dca::read_csv(dir.path / "absent.csv"), dca::IoError);
}

TEST_CASE("mean_std gives the mean and the n−1 sample standard deviation of known values") {
  const std::vector<double> values = {2, 4, 4, 4, 5, 5, 7, 9};  // deviations² sum to 32
  const dca::MeanStd summary = dca::mean_std(values);
  CHECK(summary.mean == 5.0);
  CHECK(summary.stddev == doctest::Approx(std::sqrt(32.0 / 7.0)).epsilon(1e-15));
  CHECK(summary.count == 8);
  CHECK(summary.standard_error() == doctest::Approx(std::sqrt(32.0 / 7.0) / std::sqrt(8.0)).epsilon(1e-15));

  const std::vector<double> one = {0.25};
  CHECK(dca::mean_std(one).mean == 0.25);
  CHECK(dca::mean_std(one).stddev == 0.0);
  // Far from zero, the spread survives: a one-pass sum of squares would cancel it away.
  const std::vector<double> offset = {1e9 + 1, 1e9 + 2, 1e9 + 3};
  CHECK(dca::mean_std(offset).mean == 1e9 + 2);
  CHECK(dca::mean_std(offset).stddev == 1.0);
  const std::vector<double> with_nan = {1, std::numeric_limits<double>::quiet_NaN()};
  CHECK(std::isnan(dca::mean_std(with_nan).mean));
  CHECK(std::isnan(dca::mean_std(with_nan).stddev));
  CHECK_THROWS_WITH_AS(dca::mean_std({}), doctest::Contains("mean_std: no values"), dca::RangeError);
}

TEST_CASE("a line chart is well-formed XML with one polyline per series, a legend entry each, and escaped labels") {
  const dca::LineChartConfig config{.title = "Accuracy & latents <toy>",
                                    .x_label = "N_L",
                                    .y_label = "exact match \"held out\"",
                                    .log2_x = true,
                                    .reference_lines = {{0.2, "baseline <frozen>"}}};
  const std::string svg = dca::line_chart_svg(config, latent_series);
  CHECK(xml_problem(svg) == "");
  CHECK(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"640\" height=\"400\""));
  CHECK(occurrences(svg, "<polyline") == 3);
  CHECK(occurrences(svg, "<circle") == 5 + 5 + 2 + 3);  // one per point, one per legend entry
  CHECK(occurrences(svg, "a&lt;b &amp; &quot;c&quot;") == 1);
  CHECK(svg.find("a<b") == std::string::npos);
  CHECK(occurrences(svg, "Accuracy &amp; latents &lt;toy&gt;") == 2);  // <title> and the visible title
  CHECK(occurrences(svg, "exact match &quot;held out&quot;") == 1);
  CHECK(occurrences(svg, "baseline &lt;frozen&gt;") == 1);
  CHECK(occurrences(svg, "class=\"reference\"") == 1);
  for (const char* tick : {">1</text>", ">2</text>", ">4</text>", ">8</text>", ">16</text>"})
    CHECK(occurrences(svg, tick) == 1);

  const std::string control = dca::line_chart_svg({.title = "bell\x07"}, latent_series);
  CHECK(xml_problem(control) == "");
  CHECK(occurrences(control, "bell\xEF\xBF\xBD") == 2);

  // The checker itself rejects what it must.
  CHECK(xml_problem("<svg><g></svg>") != "");
  CHECK(xml_problem("<svg a=b/>") != "");
  CHECK(xml_problem("<svg>a & b</svg>") != "");
  CHECK(xml_problem("<svg a=\"<\"/>") != "");
  CHECK(xml_problem("<svg/><svg/>") != "");
  CHECK(xml_problem("<svg a=\"1\" a=\"2\"/>") != "");
  CHECK(xml_problem("<svg>&amp;&#233;</svg>") == "");
}

TEST_CASE("a log2 x axis spaces powers of two evenly, and larger values are drawn higher") {
  const std::string svg = dca::line_chart_svg({.log2_x = true}, latent_series);
  const std::vector<double> points = numbers_of(svg, "points", 0);  // coprocessor: x0 y0 x1 y1 ...
  REQUIRE(points.size() == 10);
  const double spacing = points[2] - points[0];
  CHECK(spacing > 20);
  for (std::size_t i = 1; i + 1 < 5; ++i)
    CHECK(points[2 * i + 2] - points[2 * i] == doctest::Approx(spacing).epsilon(1e-3));
  for (std::size_t i = 0; i + 1 < 5; ++i) CHECK(points[2 * i + 3] < points[2 * i + 1]);  // SVG y grows downwards

  // On a linear axis the same x values are spaced by their differences: 1, 2, 4, 8.
  const std::string linear = dca::line_chart_svg({}, latent_series);
  const std::vector<double> linear_points = numbers_of(linear, "points", 0);
  const double unit = linear_points[2] - linear_points[0];
  CHECK(linear_points[4] - linear_points[2] == doctest::Approx(2 * unit).epsilon(1e-3));
  CHECK(linear_points[8] - linear_points[6] == doctest::Approx(8 * unit).epsilon(1e-3));
}

TEST_CASE("error bars span y ± error on the y axis's scale, centred on their points") {
  const std::vector<dca::ChartSeries> series = {{"s", {{0, 1, 0.5}, {1, 2, 1}, {2, 3, 0}}}};
  const std::string svg = dca::line_chart_svg({}, series);
  CHECK(xml_problem(svg) == "");
  const std::vector<double> points = numbers_of(svg, "points");
  REQUIRE(points.size() == 6);
  const double pixels_per_unit = points[1] - points[3];  // y = 1 to y = 2
  // The series' error path: per bar "M x low V high", then two caps "M x-4 low h8 M x-4 high h8".
  const std::vector<double> bars = numbers_of(svg, "d", 1);  // d #0 is the axes
  REQUIRE(bars.size() == 2 * 9);                             // the third point has no error bar
  for (std::size_t b = 0; b < 2; ++b) {
    const double* bar = bars.data() + 9 * b;
    const double error = b == 0 ? 0.5 : 1.0;
    CHECK(bar[0] == doctest::Approx(points[2 * b]));
    CHECK((bar[1] + bar[2]) / 2 == doctest::Approx(points[2 * b + 1]).epsilon(1e-3));
    CHECK(bar[1] - bar[2] == doctest::Approx(2 * error * pixels_per_unit).epsilon(1e-3));
  }
}

TEST_CASE("a bar chart is well-formed, one bar per category, heights proportional to values, negatives below zero") {
  const std::vector<dca::ChartBar> bars = {{"full fine-tune", 0.27, 0.01},
                                           {"random init", 0.26, 0.02},
                                           {"LoRA <128>", 0.24, 0},
                                           {"loss change", -0.06, 0.01}};
  const std::string svg = dca::bar_chart_svg(
      {.title = "Ablations", .x_label = "variant", .y_label = "accuracy", .reference_lines = {{0.21, "baseline"}}},
      bars);
  CHECK(xml_problem(svg) == "");
  CHECK(occurrences(svg, "<rect class=\"bar\"") == 4);
  CHECK(occurrences(svg, "LoRA &lt;128&gt;") == 1);
  CHECK(occurrences(svg, "class=\"zero\"") == 1);
  CHECK(occurrences(svg, "class=\"reference\"") == 1);
  std::vector<double> top, height;
  for (std::size_t at = svg.find("<rect class=\"bar\""); at != std::string::npos;
       at = svg.find("<rect class=\"bar\"", at + 1)) {
    const std::string_view rect = std::string_view(svg).substr(at, svg.find("/>", at) - at);
    top.push_back(numbers_of(rect, "y").at(0));
    height.push_back(numbers_of(rect, "height").at(0));
  }
  REQUIRE(top.size() == 4);
  CHECK(height[0] / height[2] == doctest::Approx(0.27 / 0.24).epsilon(1e-3));
  CHECK(height[3] / height[0] == doctest::Approx(0.06 / 0.27).epsilon(1e-3));
  CHECK(top[0] + height[0] == doctest::Approx(top[3]).epsilon(1e-4));  // the negative bar hangs from zero
  CHECK(top[0] < top[2]);
}

TEST_CASE("charts are byte-for-byte deterministic and written atomically") {
  const dca::LineChartConfig config{.title = "t", .x_label = "x", .y_label = "y", .log2_x = true};
  const std::string svg = dca::line_chart_svg(config, latent_series);
  CHECK(dca::line_chart_svg(config, latent_series) == svg);
  const std::vector<dca::ChartBar> bars = {{"a", 1, 0.1}, {"b", 2, 0.2}};
  const std::string bar_svg = dca::bar_chart_svg({.title = "t"}, bars);
  CHECK(dca::bar_chart_svg({.title = "t"}, bars) == bar_svg);

  TempDir dir;
  dca::write_line_chart(dir.path / "line.svg", config, latent_series);
  dca::write_bar_chart(dir.path / "bars.svg", {.title = "t"}, bars);
  CHECK(read_text(dir.path / "line.svg") == svg);
  CHECK(read_text(dir.path / "bars.svg") == bar_svg);
  CHECK(file_names(dir.path) == std::vector<std::string>{"bars.svg", "line.svg"});

  // A constant series and a single point still get a proper axis around them.
  const std::vector<dca::ChartSeries> flat = {{"flat", {{3, 0.5, 0}}}};
  CHECK(xml_problem(dca::line_chart_svg({}, flat)) == "");
  CHECK(xml_problem(dca::line_chart_svg({.log2_x = true}, flat)) == "");
}

TEST_CASE("charts reject NaN, infinity, negative errors, empty input and x <= 0 on a log2 axis, naming the point") {
  const double nan = std::numeric_limits<double>::quiet_NaN(), inf = std::numeric_limits<double>::infinity();
  using Series = std::vector<dca::ChartSeries>;
  CHECK_THROWS_WITH_AS(dca::line_chart_svg({}, Series{{"ok", {{1, 1}}}, {"bad", {{1, 1}, {2, nan}}}}),
                       doctest::Contains("series 'bad' point 1 has y = nan; values must be finite"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::line_chart_svg({}, Series{{"s", {{inf, 1}}}}),
                       doctest::Contains("series 's' point 0 has x = inf"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::line_chart_svg({}, Series{{"s", {{1, 1, -0.1}}}}),
                       doctest::Contains("series 's' point 0 has error = -0.1; error bars must be >= 0"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::line_chart_svg({.log2_x = true}, Series{{"s", {{1, 1}, {0, 1}}}}),
                       doctest::Contains("series 's' point 1 has x = 0; a log2 x axis needs x > 0"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::line_chart_svg({}, Series{}), doctest::Contains("no series"), dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::line_chart_svg({}, Series{{"hollow", {}}}),
                       doctest::Contains("series 'hollow' has no points"), dca::UsageError);
  CHECK_THROWS_WITH_AS(dca::line_chart_svg({.reference_lines = {{nan, "base"}}}, Series{{"s", {{1, 1}}}}),
                       doctest::Contains("reference line 'base' has y = nan"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::line_chart_svg({.width = 100}, Series{{"s", {{1, 1}}}}),
                       doctest::Contains("width = 100 and height = 400"), dca::RangeError);

  using Bars = std::vector<dca::ChartBar>;
  CHECK_THROWS_WITH_AS(dca::bar_chart_svg({}, Bars{{"a", 1}, {"b", -inf}}),
                       doctest::Contains("bar 1 'b' has value = -inf"), dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::bar_chart_svg({}, Bars{{"a", 1, nan}}), doctest::Contains("bar 0 'a' has error = nan"),
                       dca::RangeError);
  CHECK_THROWS_WITH_AS(dca::bar_chart_svg({}, Bars{}), doctest::Contains("no bars"), dca::UsageError);
}
