// dca/io/svg.hpp — dependency-free SVG charts for experiment reports: a line chart of
// named series with error bars (optionally on a log2 x axis, for N_L = 1, 2, 4, 8, 16) and a bar
// chart with error bars (for ablations), each with ticks, axis labels, a title and optional dashed
// reference lines (a baseline, say).
//
//   std::vector<dca::ChartSeries> series = {
//       {"coprocessor", {{1, 0.21, 0.01}, {2, 0.23, 0.01}, {4, 0.26, 0.02}}},
//       {"pause tokens", {{1, 0.20, 0.01}, {2, 0.20, 0.02}, {4, 0.21, 0.01}}}};
//   dca::LineChartConfig chart{.title = "Accuracy by latents", .x_label = "N_L", .y_label = "exact match",
//                              .log2_x = true, .reference_lines = {{0.20, "baseline"}}};
//   dca::write_line_chart("runs/arithmetic/accuracy.svg", chart, series);
//   dca::write_bar_chart("runs/arithmetic/ablation.svg", {.title = "Ablations", .y_label = "exact match"},
//                        std::vector<dca::ChartBar>{{"full", 0.27, 0.01}, {"LoRA-64", 0.23, 0.02}});
//
// Every value must be finite: a NaN or infinity is an error naming the series (or bar) and the
// point, never silently dropped, so a diverged run cannot vanish from a plot. Text is XML-escaped
// (control characters other than tab and line breaks, invalid in XML, become U+FFFD). The output
// depends only on the input — coordinates are printed locale-independently with two decimals — so
// the same results give the same bytes. Files are written atomically.
//
// Longer than ~400 lines because the two chart kinds share one drawing core (axes, ticks, frame,
// reference lines, escaping) that nothing else uses; split, that half would be a header of its own
// read only by this one.
#pragma once

#include "dca/core/config.hpp"
#include "dca/core/error.hpp"
#include "dca/io/atomic_file.hpp"

#include <algorithm>
#include <array>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <filesystem>
#include <limits>
#include <span>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace dca {

/// One point of a line series: the error bar spans y ± error (none when error is 0).
struct ChartPoint {
  double x = 0;
  double y = 0;
  double error = 0;  // >= 0
};

/// A named line; points are joined in the order given.
struct ChartSeries {
  std::string name{};
  std::vector<ChartPoint> points{};
};

/// A dashed horizontal line across the plot, labelled at its right end.
struct ReferenceLine {
  double y = 0;
  std::string label{};
};

/// Size (pixels), texts and axes of a line chart.
struct LineChartConfig {
  double width = 640;   // >= 200
  double height = 400;  // >= 150
  std::string title{};
  std::string x_label{};
  std::string y_label{};
  bool log2_x = false;  // x placed at log2(x) with ticks at powers of two; every x must be > 0
  std::vector<ReferenceLine> reference_lines{};
};

/// One bar of a bar chart: value ± error.
struct ChartBar {
  std::string category{};
  double value = 0;
  double error = 0;  // >= 0
};

/// Size (pixels) and texts of a bar chart; bars start at zero, so the y axis always includes it.
struct BarChartConfig {
  double width = 640;   // >= 200
  double height = 400;  // >= 150
  std::string title{};
  std::string x_label{};
  std::string y_label{};
  std::vector<ReferenceLine> reference_lines{};
};

namespace detail {

// Tableau 10: distinguishable colours, also in greyscale print; series cycle through them.
constexpr std::array<const char*, 10> chart_palette = {"#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f",
                                                       "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"};

// Text for XML content or a double-quoted attribute.
inline std::string xml_escape(std::string_view text) {
  std::string out;
  out.reserve(text.size());
  for (const char c : text) {
    switch (c) {
      case '&':
        out += "&amp;";
        break;
      case '<':
        out += "&lt;";
        break;
      case '>':
        out += "&gt;";
        break;
      case '"':
        out += "&quot;";
        break;
      case '\'':
        out += "&apos;";
        break;
      default:
        if (static_cast<unsigned char>(c) < 0x20 && c != '\t' && c != '\n' && c != '\r')
          out += "\xEF\xBF\xBD";  // U+FFFD: XML 1.0 forbids these characters even as references
        else
          out += c;
    }
  }
  return out;
}

// `value` with `decimals` fixed decimals, never "-0".
inline std::string fixed_text(double value, int decimals) {
  std::array<char, 400> buffer{};  // fixed notation of a double up to 1e308 with a few decimals
  const auto result =
      std::to_chars(buffer.data(), buffer.data() + buffer.size(), value + 0.0, std::chars_format::fixed, decimals);
  std::string text(buffer.data(), result.ptr);
  if (text.find_first_not_of("-0.") == std::string::npos && text.starts_with('-')) text.erase(0, 1);
  return text;
}

// A pixel coordinate: two decimals, trailing zeros dropped.
inline std::string pixel(double value) {
  std::string text = fixed_text(value, 2);
  while (text.ends_with('0')) text.pop_back();
  if (text.ends_with('.')) text.pop_back();
  return text;
}

// The approximate width of text in the 12-pixel sans-serif font: 7 pixels per character.
inline double text_width(std::string_view text) {
  index_t characters = 0;
  for (const char c : text) characters += (static_cast<unsigned char>(c) & 0xC0) != 0x80;  // UTF-8 lead bytes
  return 7.0 * static_cast<double>(characters);
}

// An axis: the value range it spans and its ticks (value, label).
struct ChartAxis {
  double low = 0;
  double high = 1;
  std::vector<std::pair<double, std::string>> ticks;
};

// About five ticks at multiples of 1, 2 or 5 times a power of ten, the range widened to the
// outermost ticks. A zero-width range is widened around its value first.
inline ChartAxis linear_axis(const char* who, double low, double high) {
  if (!(high - low > 0)) {
    const double pad = low == 0 ? 1.0 : std::abs(low) * 0.1;
    low -= pad;
    high += pad;
  }
  if (!std::isfinite(high - low))
    fail<RangeError>(who, ": values from ", low, " to ", high, " (error bars included) span more than a double holds");
  const double raw_step = (high - low) / 5;
  int exponent = static_cast<int>(std::floor(std::log10(raw_step)));
  const double fraction = raw_step / std::pow(10.0, exponent);
  int multiple = fraction <= 1 ? 1 : fraction <= 2 ? 2 : fraction <= 5 ? 5 : 10;
  if (multiple == 10) {
    multiple = 1;
    ++exponent;
  }
  const double step = multiple * std::pow(10.0, exponent);
  const double first = std::floor(low / step), last = std::ceil(high / step);
  ChartAxis axis{first * step, last * step, {}};
  const int decimals = std::max(0, -exponent);
  const auto count = static_cast<std::int64_t>(last - first);
  for (std::int64_t k = 0; k <= count; ++k) {
    const double value = (first + static_cast<double>(k)) * step;
    axis.ticks.emplace_back(value, fixed_text(value, decimals));
  }
  return axis;
}

// A log2 axis over positive values: positions are log2(x), ticks at powers of two (about ten at
// most), labelled with the power itself ("1", "16", "0.5").
inline ChartAxis log2_axis(double low, double high) {
  double first = std::floor(std::log2(low)), last = std::ceil(std::log2(high));
  if (first == last) {
    first -= 1;
    last += 1;
  }
  const double stride = std::max(1.0, std::ceil((last - first) / 10));
  ChartAxis axis{first, last, {}};
  for (double k = first; k <= last; k += stride) {
    std::array<char, 64> buffer{};
    const auto result =
        std::to_chars(buffer.data(), buffer.data() + buffer.size(), std::ldexp(1.0, static_cast<int>(k)));
    axis.ticks.emplace_back(k, std::string(buffer.data(), result.ptr));
  }
  return axis;
}

// The plot area of a chart in pixels, and the mapping of axis values into it. The x axis's range
// maps `x_inset` pixels inside the area, so that points at its ends do not sit on the frame.
struct PlotFrame {
  double left = 0, top = 0, right = 0, bottom = 0;
  ChartAxis x, y;
  double x_inset = 0;

  double px(double value) const {
    return left + x_inset + (value - x.low) / (x.high - x.low) * (right - left - 2 * x_inset);
  }
  double py(double value) const { return bottom - (value - y.low) / (y.high - y.low) * (bottom - top); }
};

inline void check_chart_size(const char* who, double width, double height) {
  if (!(width >= 200 && height >= 150 && std::isfinite(width) && std::isfinite(height)))
    fail<RangeError>(who, ": width = ", width, " and height = ", height, " must be finite and at least 200 by 150");
}

inline void check_finite(const char* who, const std::string& what, const char* field, double value) {
  if (!std::isfinite(value)) fail<RangeError>(who, ": ", what, " has ", field, " = ", value, "; values must be finite");
}

inline void check_error_bar(const char* who, const std::string& what, double error) {
  check_finite(who, what, "error", error);
  if (error < 0) fail<RangeError>(who, ": ", what, " has error = ", error, "; error bars must be >= 0");
}

// Widens [y_low, y_high] to take in every reference line, which must be finite.
inline void extend_to_reference_lines(const char* who, const std::vector<ReferenceLine>& lines, double& y_low,
                                      double& y_high) {
  for (const ReferenceLine& line : lines) {
    check_finite(who, "reference line '" + line.label + "'", "y", line.y);
    y_low = std::min(y_low, line.y);
    y_high = std::max(y_high, line.y);
  }
}

// The opening of the document: root element, accessible title, white background, visible title.
inline std::string chart_header(double width, double height, const std::string& title) {
  std::string svg = concat("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"", pixel(width), "\" height=\"",
                           pixel(height), "\" viewBox=\"0 0 ", pixel(width), " ", pixel(height),
                           "\" font-family=\"sans-serif\" font-size=\"12\">\n");
  if (!title.empty()) svg += "<title>" + xml_escape(title) + "</title>\n";
  svg += "<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n";
  if (!title.empty())
    svg += concat("<text x=\"", pixel(width / 2), "\" y=\"26\" text-anchor=\"middle\" font-size=\"15\">",
                  xml_escape(title), "</text>\n");
  return svg;
}

// Horizontal grid lines with their y tick labels, the axis lines and the axis labels.
inline void draw_frame(std::string& svg, const PlotFrame& frame, const std::string& x_label,
                       const std::string& y_label) {
  svg += "<g class=\"y-ticks\">\n";
  for (const auto& [value, label] : frame.y.ticks) {
    const std::string y = pixel(frame.py(value));
    svg += concat("<line x1=\"", pixel(frame.left), "\" y1=\"", y, "\" x2=\"", pixel(frame.right), "\" y2=\"", y,
                  "\" stroke=\"#e6e6e6\"/>\n<text x=\"", pixel(frame.left - 6), "\" y=\"", pixel(frame.py(value) + 4),
                  "\" text-anchor=\"end\">", xml_escape(label), "</text>\n");
  }
  svg += "</g>\n";
  svg += concat("<path class=\"axes\" d=\"M", pixel(frame.left), " ", pixel(frame.top), "V", pixel(frame.bottom), "H",
                pixel(frame.right), "\" fill=\"none\" stroke=\"#333\"/>\n");
  if (!x_label.empty())
    svg += concat("<text x=\"", pixel((frame.left + frame.right) / 2), "\" y=\"", pixel(frame.bottom + 38),
                  "\" text-anchor=\"middle\">", xml_escape(x_label), "</text>\n");
  if (!y_label.empty()) {
    const std::string x = pixel(18), y = pixel((frame.top + frame.bottom) / 2);
    svg += concat("<text x=\"", x, "\" y=\"", y, "\" text-anchor=\"middle\" transform=\"rotate(-90 ", x, " ", y, ")\">",
                  xml_escape(y_label), "</text>\n");
  }
}

// Dashed horizontal lines across the plot, each labelled at its right end.
inline void draw_reference_lines(std::string& svg, const PlotFrame& frame, std::span<const ReferenceLine> lines) {
  for (const ReferenceLine& line : lines) {
    const double y = frame.py(line.y);
    svg += concat("<line class=\"reference\" x1=\"", pixel(frame.left), "\" y1=\"", pixel(y), "\" x2=\"",
                  pixel(frame.right), "\" y2=\"", pixel(y), "\" stroke=\"#555\" stroke-dasharray=\"6 4\"/>\n");
    if (!line.label.empty())
      svg += concat("<text x=\"", pixel(frame.right - 4), "\" y=\"", pixel(y - 4),
                    "\" text-anchor=\"end\" fill=\"#555\">", xml_escape(line.label), "</text>\n");
  }
}

// Error bars as one path: a vertical stroke from y − error to y + error with 8-pixel caps.
inline void append_error_bar(std::string& path, const PlotFrame& frame, double x_pixel, double y, double error) {
  if (error == 0) return;
  const std::string low = pixel(frame.py(y - error)), high = pixel(frame.py(y + error));
  path += concat("M", pixel(x_pixel), " ", low, "V", high, "M", pixel(x_pixel - 4), " ", low, "h8M", pixel(x_pixel - 4),
                 " ", high, "h8");
}

}  // namespace detail

/// A line chart of `series` as an SVG document: one polyline per series with a circle per point,
/// error bars, a legend of the series names at the right, ticks, labels and reference lines.
/// UsageError without series or for a series without points; RangeError naming the series and
/// point for a NaN or infinite value, a negative error, or (log2_x) an x <= 0, and for a size
/// below 200 by 150.
inline std::string line_chart_svg(const LineChartConfig& config, std::span<const ChartSeries> series) {
  constexpr const char* who = "line_chart_svg";
  detail::check_chart_size(who, config.width, config.height);
  if (series.empty()) detail::fail<UsageError>(who, ": no series to plot");
  constexpr double infinity = std::numeric_limits<double>::infinity();
  double x_low = infinity, x_high = -infinity, y_low = infinity, y_high = -infinity, widest_name = 0;
  for (const ChartSeries& s : series) {
    if (s.points.empty()) detail::fail<UsageError>(who, ": series '", s.name, "' has no points");
    widest_name = std::max(widest_name, detail::text_width(s.name));
    for (std::size_t i = 0; i < s.points.size(); ++i) {
      const ChartPoint& p = s.points[i];
      const std::string what = detail::concat("series '", s.name, "' point ", i);
      detail::check_finite(who, what, "x", p.x);
      detail::check_finite(who, what, "y", p.y);
      detail::check_error_bar(who, what, p.error);
      if (config.log2_x && !(p.x > 0))
        detail::fail<RangeError>(who, ": ", what, " has x = ", p.x, "; a log2 x axis needs x > 0");
      x_low = std::min(x_low, p.x);
      x_high = std::max(x_high, p.x);
      y_low = std::min(y_low, p.y - p.error);
      y_high = std::max(y_high, p.y + p.error);
    }
  }
  detail::extend_to_reference_lines(who, config.reference_lines, y_low, y_high);
  const double legend_width = std::min(config.width / 3, 40 + widest_name);
  detail::PlotFrame frame{70,
                          config.title.empty() ? 16.0 : 44.0,
                          config.width - 16 - legend_width,
                          config.height - (config.x_label.empty() ? 32.0 : 52.0),
                          config.log2_x ? detail::log2_axis(x_low, x_high) : detail::linear_axis(who, x_low, x_high),
                          detail::linear_axis(who, y_low, y_high),
                          12};
  const auto x_position = [&](double x) { return frame.px(config.log2_x ? std::log2(x) : x); };

  std::string svg = detail::chart_header(config.width, config.height, config.title);
  svg += "<g class=\"x-ticks\">\n";
  for (const auto& [value, label] : frame.x.ticks) {
    const std::string x = detail::pixel(frame.px(value));
    svg += detail::concat("<line x1=\"", x, "\" y1=\"", detail::pixel(frame.top), "\" x2=\"", x, "\" y2=\"",
                          detail::pixel(frame.bottom), "\" stroke=\"#e6e6e6\"/>\n<text x=\"", x, "\" y=\"",
                          detail::pixel(frame.bottom + 18), "\" text-anchor=\"middle\">", detail::xml_escape(label),
                          "</text>\n");
  }
  svg += "</g>\n";
  detail::draw_frame(svg, frame, config.x_label, config.y_label);
  detail::draw_reference_lines(svg, frame, config.reference_lines);
  for (std::size_t s = 0; s < series.size(); ++s) {
    const char* color = detail::chart_palette[s % detail::chart_palette.size()];
    svg += detail::concat("<g class=\"series\" fill=\"", color, "\" stroke=\"", color, "\">\n<polyline points=\"");
    std::string errors, markers;
    for (std::size_t i = 0; i < series[s].points.size(); ++i) {
      const ChartPoint& p = series[s].points[i];
      const double x = x_position(p.x);
      svg += detail::concat(i == 0 ? "" : " ", detail::pixel(x), ",", detail::pixel(frame.py(p.y)));
      detail::append_error_bar(errors, frame, x, p.y, p.error);
      markers +=
          detail::concat("<circle cx=\"", detail::pixel(x), "\" cy=\"", detail::pixel(frame.py(p.y)), "\" r=\"3\"/>\n");
    }
    svg += "\" fill=\"none\" stroke-width=\"2\"/>\n";
    if (!errors.empty()) svg += "<path d=\"" + errors + "\" fill=\"none\"/>\n";
    svg += markers + "</g>\n";
  }
  svg += "<g class=\"legend\">\n";
  const double legend_x = frame.right + 16;
  for (std::size_t s = 0; s < series.size(); ++s) {
    const char* color = detail::chart_palette[s % detail::chart_palette.size()];
    const double y = frame.top + 8 + 20 * static_cast<double>(s);
    svg +=
        detail::concat("<line x1=\"", detail::pixel(legend_x), "\" y1=\"", detail::pixel(y), "\" x2=\"",
                       detail::pixel(legend_x + 20), "\" y2=\"", detail::pixel(y), "\" stroke=\"", color,
                       "\" stroke-width=\"2\"/>\n<circle cx=\"", detail::pixel(legend_x + 10), "\" cy=\"",
                       detail::pixel(y), "\" r=\"3\" fill=\"", color, "\"/>\n<text x=\"", detail::pixel(legend_x + 26),
                       "\" y=\"", detail::pixel(y + 4), "\">", detail::xml_escape(series[s].name), "</text>\n");
  }
  svg += "</g>\n</svg>\n";
  return svg;
}

/// A bar chart of `bars` as an SVG document: one bar per category from zero to its value, error
/// bars, category names under the bars, ticks, labels and reference lines. UsageError without
/// bars; RangeError naming the category for a NaN or infinite value or a negative error, and for
/// a size below 200 by 150.
inline std::string bar_chart_svg(const BarChartConfig& config, std::span<const ChartBar> bars) {
  constexpr const char* who = "bar_chart_svg";
  detail::check_chart_size(who, config.width, config.height);
  if (bars.empty()) detail::fail<UsageError>(who, ": no bars to plot");
  double y_low = 0, y_high = 0;
  for (std::size_t i = 0; i < bars.size(); ++i) {
    const ChartBar& bar = bars[i];
    const std::string what = detail::concat("bar ", i, " '", bar.category, "'");
    detail::check_finite(who, what, "value", bar.value);
    detail::check_error_bar(who, what, bar.error);
    y_low = std::min(y_low, bar.value - bar.error);
    y_high = std::max(y_high, bar.value + bar.error);
  }
  detail::extend_to_reference_lines(who, config.reference_lines, y_low, y_high);
  detail::PlotFrame frame{70,
                          config.title.empty() ? 16.0 : 44.0,
                          config.width - 16,
                          config.height - (config.x_label.empty() ? 32.0 : 52.0),
                          {0, static_cast<double>(bars.size()), {}},
                          detail::linear_axis(who, y_low, y_high),
                          0};

  std::string svg = detail::chart_header(config.width, config.height, config.title);
  detail::draw_frame(svg, frame, config.x_label, config.y_label);
  const double band = (frame.right - frame.left) / static_cast<double>(bars.size());
  const double zero = frame.py(0);
  std::string errors;
  svg += detail::concat("<g class=\"bars\" fill=\"", detail::chart_palette[0], "\">\n");
  for (std::size_t i = 0; i < bars.size(); ++i) {
    const double center = frame.px(static_cast<double>(i) + 0.5), top = frame.py(bars[i].value);
    svg += detail::concat("<rect class=\"bar\" x=\"", detail::pixel(center - 0.3 * band), "\" y=\"",
                          detail::pixel(std::min(top, zero)), "\" width=\"", detail::pixel(0.6 * band), "\" height=\"",
                          detail::pixel(std::abs(zero - top)), "\"/>\n<text x=\"", detail::pixel(center), "\" y=\"",
                          detail::pixel(frame.bottom + 18), "\" text-anchor=\"middle\" fill=\"black\">",
                          detail::xml_escape(bars[i].category), "</text>\n");
    detail::append_error_bar(errors, frame, center, bars[i].value, bars[i].error);
  }
  svg += "</g>\n";
  if (!errors.empty()) svg += "<path class=\"error-bars\" d=\"" + errors + "\" fill=\"none\" stroke=\"#333\"/>\n";
  if (frame.y.low < 0)
    svg += detail::concat("<line class=\"zero\" x1=\"", detail::pixel(frame.left), "\" y1=\"", detail::pixel(zero),
                          "\" x2=\"", detail::pixel(frame.right), "\" y2=\"", detail::pixel(zero),
                          "\" stroke=\"#333\"/>\n");
  detail::draw_reference_lines(svg, frame, config.reference_lines);  // last: visible over the bars
  svg += "</svg>\n";
  return svg;
}

/// line_chart_svg written to `path` atomically. Errors as line_chart_svg; IoError from the write.
inline void write_line_chart(const std::filesystem::path& path, const LineChartConfig& config,
                             std::span<const ChartSeries> series) {
  write_text_atomically(path, line_chart_svg(config, series));
}

/// bar_chart_svg written to `path` atomically. Errors as bar_chart_svg; IoError from the write.
inline void write_bar_chart(const std::filesystem::path& path, const BarChartConfig& config,
                            std::span<const ChartBar> bars) {
  write_text_atomically(path, bar_chart_svg(config, bars));
}

}  // namespace dca
