// examples/progress.hpp — the progress line the examples redraw in place: step, bar, loss,
// throughput, ETA and, for runs that evaluate as they train, the latest held-out figure.
#pragma once

#include <dca/core/config.hpp>
#include <dca/experiment/report.hpp>

#include <cstdio>
#include <string>

namespace examples {

/// Redraws "step s/N [=====>    ] loss L | R unit/s | ETA | held_out" on the current line.
inline void draw_progress(dca::index_t step, dca::index_t total, double loss, double rate, const char* unit,
                          double eta_seconds, const std::string& held_out = "") {
  constexpr int width = 28;
  const int filled = static_cast<int>(width * static_cast<double>(step) / static_cast<double>(total));
  std::string bar(static_cast<std::size_t>(filled), '=');
  if (filled < width) bar += '>';
  bar.resize(width, ' ');
  std::printf("\rstep %6ld/%ld [%s] loss %.3f | %6.0f %s/s | ETA %s%s%s   ", static_cast<long>(step),
              static_cast<long>(total), bar.c_str(), loss, rate, unit, dca::format_duration(eta_seconds).c_str(),
              held_out.empty() ? "" : " | ", held_out.c_str());
  std::fflush(stdout);
}

}  // namespace examples
