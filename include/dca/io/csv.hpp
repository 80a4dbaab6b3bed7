// dca/io/csv.hpp — experiment results as CSV files: RFC 4180 quoting, numbers printed so
// that they read back exactly, files written atomically, and a reader for what the writer writes
// (to regenerate tables and plots from saved results).
//
//   dca::CsvWriter results({"latents", "seed", "accuracy"});
//   results.row(8, 1, 0.2267).row(8, 2, 0.2301);
//   results.write("runs/arithmetic/accuracy.csv");
//   const dca::CsvTable table = dca::read_csv("runs/arithmetic/accuracy.csv");
//   const double first = dca::parse_csv_number(table.rows[0][table.column("accuracy")]);
//
// Format: one record per line, fields separated by commas. A field is quoted when it holds a
// comma, a double quote, CR or LF (inner quotes doubled), and when it is the only field of its
// record and empty (which would otherwise be a blank line). Records end with LF rather than RFC
// 4180's CRLF, which keeps saved results diff-friendly; the reader accepts both.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/io/atomic_file.hpp"

#include <array>
#include <charconv>
#include <concepts>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>
#include <system_error>
#include <type_traits>
#include <utility>
#include <vector>

namespace dca {

/// One CSV record: its fields as text.
using CsvRow = std::vector<std::string>;

/// A CSV file: its first record (the column names) and the records after it, all as wide as it.
struct CsvTable {
  CsvRow header;
  std::vector<CsvRow> rows;

  /// The index of the first column named `name`. RangeError naming it and the columns otherwise.
  index_t column(std::string_view name) const {
    for (std::size_t c = 0; c < header.size(); ++c)
      if (header[c] == name) return static_cast<index_t>(c);
    std::string columns;
    for (const std::string& h : header) columns += (columns.empty() ? "'" : ", '") + h + "'";
    detail::fail<RangeError>("CsvTable::column: no column '", name, "' (columns: ", columns, ")");
  }
};

/// The shortest text that reads back (std::from_chars, parse_csv_number<T>) to the same value of
/// type T: "0.1", "1e+300", "-0", "inf", "nan". Locale-independent, unlike printf.
template <std::floating_point T>
std::string csv_number(T value) {
  std::array<char, 64> buffer{};
  const auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value);
  return {buffer.data(), result.ptr};
}

namespace detail {
template <class T>
concept CsvInteger = std::integral<T> && !std::same_as<T, bool>;
}  // namespace detail

/// An integer in decimal.
template <detail::CsvInteger T>
std::string csv_number(T value) {
  std::array<char, 24> buffer{};
  const auto result = std::to_chars(buffer.data(), buffer.data() + buffer.size(), value);
  return {buffer.data(), result.ptr};
}

/// A number field read back as T (double by default). The whole field must be the number, as
/// csv_number writes it ("inf" and "nan" included); FormatError quoting the field otherwise.
template <std::floating_point T = double>
T parse_csv_number(std::string_view field) {
  T value{};
  const auto result = std::from_chars(field.data(), field.data() + field.size(), value);
  if (result.ec != std::errc() || result.ptr != field.data() + field.size())
    detail::fail<FormatError>("parse_csv_number: '", field, "' is not a number");
  return value;
}

/// `field` as it appears in a record: as it is, or in double quotes with inner quotes doubled
/// when it holds a comma, a double quote, CR or LF.
inline std::string csv_quote(std::string_view field) {
  if (field.find_first_of(",\"\r\n") == std::string_view::npos) return std::string(field);
  std::string quoted = "\"";
  for (const char c : field) {
    if (c == '"') quoted += '"';
    quoted += c;
  }
  return quoted + '"';
}

/// The text of a CSV file with this header and these rows (format in the header comment).
/// UsageError for an empty header; ShapeError naming the row when one is not as wide as the header.
inline std::string format_csv(const CsvRow& header, std::span<const CsvRow> rows) {
  if (header.empty()) detail::fail<UsageError>("format_csv: the header has no columns");
  std::string text;
  const auto append = [&](const CsvRow& record) {
    if (record.size() == 1 && record[0].empty()) {
      text += "\"\"\n";
      return;
    }
    for (std::size_t c = 0; c < record.size(); ++c) text += (c == 0 ? "" : ",") + csv_quote(record[c]);
    text += '\n';
  };
  append(header);
  for (std::size_t r = 0; r < rows.size(); ++r) {
    if (rows[r].size() != header.size())
      detail::fail<ShapeError>("format_csv: row ", r, " has ", rows[r].size(), " fields, but the header has ",
                               header.size());
    append(rows[r]);
  }
  return text;
}

/// Writes format_csv(header, rows) to `path` atomically (readers see the old file or the whole
/// new one). Errors as format_csv, IoError as write_file_atomically.
inline void write_csv(const std::filesystem::path& path, const CsvRow& header, std::span<const CsvRow> rows) {
  write_text_atomically(path, format_csv(header, rows));
}

/// Parses CSV text: quoted fields (with doubled quotes, commas and line breaks inside), LF or CRLF
/// record ends, a final line break optional. The first record is the header. `source` names the
/// text in errors: FormatError with the line number for an unclosed quote, text after a closing
/// quote, a quote inside an unquoted field, a record wider or narrower than the header, or no
/// header at all.
inline CsvTable parse_csv(std::string_view text, std::string_view source = "CSV text") {
  if (text.empty()) detail::fail<FormatError>(source, ": empty, there is no header");
  const std::size_t n = text.size();
  std::vector<CsvRow> records;
  std::vector<index_t> record_lines;
  index_t line = 1;
  std::size_t i = 0;
  while (i < n) {
    record_lines.push_back(line);
    CsvRow record;
    for (;;) {
      std::string field;
      if (text[i] == '"') {
        const index_t opened_on = line;
        for (++i;; ++i) {
          if (i == n) detail::fail<FormatError>(source, ": line ", opened_on, ": a quoted field is never closed");
          if (text[i] == '"') {
            if (i + 1 < n && text[i + 1] == '"') {
              field += '"';
              ++i;
              continue;
            }
            ++i;
            break;
          }
          if (text[i] == '\n') ++line;
          field += text[i];
        }
        const bool at_separator =
            i == n || text[i] == ',' || text[i] == '\n' || (text[i] == '\r' && i + 1 < n && text[i + 1] == '\n');
        if (!at_separator)
          detail::fail<FormatError>(source, ": line ", line, ": '", text[i], "' follows a closing quote");
      } else {
        std::size_t end = text.find_first_of(",\n", i);
        if (end == std::string_view::npos) end = n;
        std::string_view raw = text.substr(i, end - i);
        if (end < n && text[end] == '\n' && raw.ends_with('\r')) raw.remove_suffix(1);
        if (raw.find('"') != std::string_view::npos)
          detail::fail<FormatError>(source, ": line ", line, ": a double quote inside an unquoted field ('", raw,
                                    "'); quote the field and double the quote");
        field = raw;
        i = end;
      }
      record.push_back(std::move(field));
      if (i < n && text[i] == ',') {
        ++i;
        continue;
      }
      if (i < n && text[i] == '\r') ++i;
      if (i < n && text[i] == '\n') {
        ++i;
        ++line;
      }
      break;
    }
    records.push_back(std::move(record));
  }
  CsvTable table{std::move(records[0]), {}};
  for (std::size_t r = 1; r < records.size(); ++r) {
    if (records[r].size() != table.header.size())
      detail::fail<FormatError>(source, ": line ", record_lines[r], ": ", records[r].size(),
                                " fields, but the header has ", table.header.size());
    table.rows.push_back(std::move(records[r]));
  }
  return table;
}

/// parse_csv of a file's contents, naming the file in errors; IoError when it cannot be read.
inline CsvTable read_csv(const std::filesystem::path& path) {
  const std::vector<std::byte> bytes = read_file(path);
  return parse_csv(std::string_view(reinterpret_cast<const char*>(bytes.data()), bytes.size()), path.string());
}

/// Collects rows of mixed strings and numbers under a fixed header, then writes them as CSV.
class CsvWriter {
 public:
  /// UsageError for an empty header.
  explicit CsvWriter(CsvRow header) : header_(std::move(header)) {
    if (header_.empty()) detail::fail<UsageError>("CsvWriter: the header has no columns");
  }

  /// Appends a row of text fields. ShapeError naming the widths unless it is as wide as the header.
  CsvWriter& add_row(CsvRow fields) {
    if (fields.size() != header_.size())
      detail::fail<ShapeError>("CsvWriter: row ", rows_.size(), " has ", fields.size(), " fields, but the header has ",
                               header_.size());
    rows_.push_back(std::move(fields));
    return *this;
  }

  /// Appends a row of fields, each a string (as it is) or a number (csv_number).
  template <class... Fields>
  CsvWriter& row(const Fields&... fields) {
    return add_row(CsvRow{field_text(fields)...});
  }

  const CsvRow& header() const { return header_; }
  const std::vector<CsvRow>& rows() const { return rows_; }

  /// The CSV text (format_csv).
  std::string text() const { return format_csv(header_, rows_); }

  /// Writes the CSV atomically (write_csv).
  void write(const std::filesystem::path& path) const { write_csv(path, header_, rows_); }

 private:
  template <class Field>
  static std::string field_text(const Field& field) {
    if constexpr (std::is_convertible_v<const Field&, std::string_view>)
      return std::string(std::string_view(field));
    else if constexpr (std::is_arithmetic_v<Field> && !std::is_same_v<Field, bool> && !std::is_same_v<Field, char>)
      return csv_number(field);
    else
      static_assert(!sizeof(Field), "a CSV field is a string or a number (write bools and chars as strings)");
  }

  CsvRow header_;
  std::vector<CsvRow> rows_;
};

}  // namespace dca
