import Foundation

/// report.html: the run's numbers and three plots (SVG, no scripts): throughput, latency
/// percentiles and partitions per node over time, with the scenario events marked.
enum LoadReport {
    static func html(_ result: LoadResult) -> String {
        // Each interval is plotted at its end: the deliveries of second k are counted by k + 1.
        let seconds = result.intervals.map { Double($0.second + 1) }
        // Events marked by their number in the scenario list (labels of close events would collide).
        let events = result.events.enumerated().map { ($1.at, "\($0 + 1)") }
        let xMax = Double((result.intervals.last?.second ?? 0) + 1)
        let throughput = Chart(
            title: "Throughput (events/s published, deliveries/s)", yLabel: "per second",
            series: [
                .init(
                    name: "published", color: "#1f77b4",
                    points: zip(seconds, result.intervals.map { Double($0.published) }).map { ($0, $1) }),
                .init(
                    name: "delivered", color: "#2ca02c",
                    points: zip(seconds, result.intervals.map { Double($0.delivered) }).map { ($0, $1) }),
            ],
            events: events, xMax: xMax
        )
        let backlog = Chart(
            title: "Backlog: deliveries owed for what was published so far", yLabel: "deliveries",
            series: [
                .init(
                    name: "backlog", color: "#d62728",
                    points: zip(seconds, result.intervals.map { Double($0.backlog) }).map { ($0, $1) })
            ],
            events: events, xMax: xMax
        )
        let latency = Chart(
            title: "Latency from the intended send time, by second of arrival (ms, log scale)", yLabel: "ms",
            series: [
                ("p50", "#2ca02c", \LoadResult.Percentiles.p50), ("p99", "#ff7f0e", \.p99), ("max", "#d62728", \.max),
            ].map { name, color, path in
                .init(
                    name: name, color: color,
                    points: result.intervals.compactMap { interval in
                        interval.latencyMs.map { (Double(interval.second + 1), $0[keyPath: path]) }
                    })
            },
            events: events, logarithmic: true, xMax: xMax
        )
        let names = Set(result.intervals.flatMap { $0.partitions.keys }).sorted()
        let palette = [
            "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#bcbd22",
            "#17becf",
        ]
        let partitions = Chart(
            title: "Partitions held per node (of \(result.partitions))", yLabel: "partitions",
            series: names.enumerated().map { index, name in
                .init(
                    name: name, color: palette[index % palette.count],
                    points: result.intervals.map { (Double($0.second + 1), Double($0.partitions[name] ?? 0)) })
            },
            events: events, xMax: xMax
        )
        var rows = ""
        func row(_ name: String, _ value: String) {
            rows += "<tr><th>\(escape(name))</th><td>\(escape(value))</td></tr>\n"
        }
        row(
            "load",
            (result.baselines == nil ? "" : "open loop after the baselines: ")
                + "\(result.rate) events/s for \(result.duration) s, \(result.averageEventBytes) B each on average")
        row(
            "cluster",
            "\(result.nodes) node\(result.nodes == 1 ? "" : "s") at the start, \(result.partitions) partitions, \(result.subscriptions) subscriptions over \(result.projects) projects"
        )
        row("published", "\(result.published)")
        row("deliveries", "\(result.delivered) of \(result.expectedDeliveries) expected")
        row(
            "not delivered",
            "\(result.lost)"
                + (result.lost > 0
                    ? " (still in Herald's queues when the run ended: \(result.stillQueued) notifications; dead letters: \(result.deadLetters))"
                    : ""))
        row("duplicates", "\(result.duplicates)")
        if let outOfOrder = result.outOfOrder {
            row("out of order (per subscription, partition, exchange)", "\(outOfOrder)")
        }
        if let l = result.latencyMs {
            row(
                "latency (ms)",
                String(
                    format: "p50 %.1f · p75 %.1f · p95 %.1f · p99 %.1f · p99.9 %.1f · p99.99 %.1f · max %.1f", l.p50,
                    l.p75, l.p95, l.p99, l.p999, l.p9999, l.max))
        }
        for process in result.processes {
            row(
                "CPU \(process.name)",
                String(
                    format: "%.2f s, %.1f µs per published event%@", process.cpuSeconds,
                    process.cpuMicrosecondsPerEvent,
                    process.exitStatus.map { ", exit status \($0)" } ?? ""))
        }
        if let zaqar = result.zaqar {
            let grew = zaqar.grew.map { "\($0)" } ?? "unknown (see the run's log)"
            row(
                "sink",
                "Zaqar at \(zaqar.url), through the recording sink (it forwards each request and records what Zaqar answered 201)"
            )
            row(
                "Zaqar check",
                "took \(zaqar.accepted) messages of the open loop; its queues' stats grew by \(grew)"
                    + (zaqar.refusedByStatus.isEmpty
                        ? ""
                        : "; refused requests by status: "
                            + zaqar.refusedByStatus.sorted { $0.key < $1.key }.map { "\($0.key): \($0.value)" }.joined(
                                separator: ", ")))
        } else {
            row("sink", "built-in (answers 201 at once)")
        }
        let baselines = result.baselines.map { baselineTable($0, intoZaqar: result.zaqar != nil) } ?? ""
        let eventList =
            result.events.isEmpty
            ? "<p>No scenario events.</p>"
            : "<ol>" + result.events.map { "<li>t = \(Int($0.at)) s: \(escape($0.label))</li>" }.joined()
                + "</ol><p>The plots mark each event with its number.</p>"
        return """
            <!DOCTYPE html>
            <html lang="en"><head><meta charset="utf-8"><title>Herald load run</title>
            <style>
            body { font-family: sans-serif; margin: 24px; color: #222; max-width: 1000px; }
            table { border-collapse: collapse; margin-bottom: 16px; }
            th, td { text-align: left; padding: 4px 12px 4px 0; border-bottom: 1px solid #ddd; vertical-align: top; }
            th { font-weight: 600; white-space: nowrap; }
            h2 { font-size: 1.1em; margin-top: 28px; }
            .lost { color: \(result.lost == 0 ? "#2ca02c" : "#d62728"); font-weight: 600; }
            </style></head><body>
            <h1>Herald load run</h1>
            <p class="lost">\(result.lost == 0 ? "Nothing lost" : result.stillQueued > 0 ? "\(result.lost) deliveries not made by the end (work still queued)" : "\(result.lost) deliveries lost"): \(result.delivered) of \(result.expectedDeliveries) expected deliveries arrived, \(result.duplicates) duplicates.</p>
            <table>\(rows)</table>\(baselines)
            <h2>Scenario</h2>\(eventList)
            <h2>Throughput</h2>\(throughput.svg)
            <h2>Backlog</h2>\(backlog.svg)
            <h2>Latency</h2>\(latency.svg)
            <h2>Partitions per node</h2>\(partitions.svg)
            <p>Dashed grey lines: the scenario events. Each point is one second, drawn at its end; a gap in a line is a second with nothing to show (no deliveries, so no latency). Latency is measured from each event's intended send time (open loop, no coordinated omission) to its arrival at the sink.</p>
            </body></html>
            """
    }

    /// The same run's ceilings and costs against the goals (`--baselines`).
    static func baselineTable(_ b: LoadBaselines, intoZaqar: Bool) -> String {
        func fmt(_ value: Double, _ digits: Int = 0) -> String {
            value.isFinite ? String(format: "%.\(digits)f", value) : "-"
        }
        let rows: [(String, String, String, String, String)] = [
            (
                "notifications/s, end to end into the sink", fmt(b.heraldPerSecond),
                "broker ceiling for Herald's topology (plain rabbitmq-c loop): \(fmt(b.brokerCeilingPerSecond))",
                fmt(b.heraldToBrokerCeiling, 2) + "x",
                intoZaqar ? "≥ 0.7x into the built-in sink (this run went into Zaqar)" : "≥ 0.7x"
            ),
            (
                "deliveries/s into the sink", fmt(b.heraldDeliveriesPerSecond),
                "one POST per delivery: \(fmt(b.onePostDeliveriesPerSecond))", fmt(b.heraldToOnePost, 2) + "x",
                intoZaqar ? "≥ 10x" : "≥ 10x into a real Zaqar (--sink zaqar)"
            ),
            (
                "deliveries/s at Herald's batch size", fmt(b.heraldDeliveriesPerSecond),
                "batches of \(b.sameBatchSize) posted straight into the same sink: \(fmt(b.sameBatchDeliveriesPerSecond))",
                fmt(b.heraldToSameBatch, 2) + "x", intoZaqar ? "≥ 0.9x" : "≥ 0.9x into a real Zaqar (--sink zaqar)"
            ),
            ("deliveries per request", b.messagesPerRequest.map { fmt($0, 1) } ?? "-", "1", "", ""),
            (
                "node CPU per notification", fmt(b.cpuMicrosecondsPerEvent, 1) + " µs",
                "the plain rabbitmq-c loop's own CPU: \(fmt(b.brokerLoopCPUMicrosecondsPerEvent, 1)) µs",
                fmt(b.cpuMicrosecondsPerEvent / b.brokerLoopCPUMicrosecondsPerEvent, 1) + "x", "≤ 10 µs"
            ),
            ("Redis commands per notification", fmt(b.redisCommandsPerEvent, 4), "", "", "≤ 0.05"),
            ("ready after start", b.readySeconds.map { fmt($0, 2) + " s" }.joined(separator: ", "), "", "", "≤ 2 s"),
            (
                "idle RSS",
                zip(b.idleRSSMegabytes, b.idleAnonymousMegabytes).map {
                    fmt($0, 1) + " MB (" + fmt($1, 1) + " MB anonymous)"
                }.joined(separator: ", "), "", "", "≤ 50 MB"
            ),
        ]
        let body = rows.map { row in
            "<tr><th>\(escape(row.0))</th><td>\(escape(row.1))</td><td>\(escape(row.2))</td><td>\(escape(row.3))</td><td>\(escape(row.4))</td></tr>"
        }.joined(separator: "\n")
        return """
            <h2>Baselines (same run, \(b.events) notifications per saturation phase)</h2>
            <table><tr><th>measure</th><th>Herald</th><th>baseline</th><th>ratio</th><th>goal</th></tr>
            \(body)
            </table>
            <p>Saturation phases run before the open-loop load: the broker ceiling drains a pre-filled queue through a plain rabbitmq-c loop (consume, publish with confirms to a partition queue, consume and ack); Herald's nodes drain the same number of notifications from a pre-filled ingest queue, measured between 10% and 90% of the deliveries; the one-POST baseline posts each delivery on its own into the same sink, and the batch baseline posts the same kind of messages in batches of Herald's measured size (deliveries per request, rounded), over the same number of connections. CPU and Redis commands are counted over the same 10–90% window.</p>
            """
    }

    static func escape(_ text: String) -> String {
        text.replacingOccurrences(of: "&", with: "&amp;").replacingOccurrences(of: "<", with: "&lt;")
            .replacingOccurrences(of: ">", with: "&gt;")
    }

    /// A line chart as inline SVG.
    struct Chart {
        struct Series {
            var name: String
            var color: String
            var points: [(Double, Double)]
        }

        var title: String
        var yLabel: String
        var series: [Series]
        var events: [(Double, String)]
        var logarithmic = false
        var xMax: Double? = nil

        var svg: String {
            let width = 960.0
            let height = 340.0
            let left = 70.0
            let right = 20.0
            let top = 50.0
            let bottom = 40.0
            let xs = series.flatMap { $0.points.map(\.0) } + events.map(\.0)
            let ys = series.flatMap { $0.points.map(\.1) }
            let xMax = self.xMax ?? max(xs.max() ?? 1, 1)
            let yMax =
                logarithmic ? pow(10, ceil(log10(max(ys.max() ?? 10, 10)))) : Self.niceCeiling(max(ys.max() ?? 1, 1))
            let yMin = logarithmic ? pow(10, floor(log10(max(ys.filter { $0 > 0 }.min() ?? 1, 0.1)))) : 0
            func x(_ value: Double) -> Double { left + value / xMax * (width - left - right) }
            func y(_ value: Double) -> Double {
                let share =
                    logarithmic ? (log10(max(value, yMin)) - log10(yMin)) / (log10(yMax) - log10(yMin)) : value / yMax
                return height - bottom - share * (height - top - bottom)
            }
            var out =
                "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(width))\" height=\"\(Int(height))\" viewBox=\"0 0 \(Int(width)) \(Int(height))\" font-family=\"sans-serif\" font-size=\"12\">\n"
            out += "<text x=\"\(left)\" y=\"18\" font-weight=\"600\">\(LoadReport.escape(title))</text>\n"
            let ticks =
                logarithmic
                ? stride(from: log10(yMin), through: log10(yMax), by: 1).map { pow(10, $0) }
                : (0...4).map { yMax * Double($0) / 4 }
            for value in ticks {
                out += String(
                    format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#eee\"/>", left,
                    width - right, y(value), y(value))
                out += String(
                    format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"end\" fill=\"#555\">%@</text>\n", left - 6,
                    y(value) + 4, Self.label(value))
            }
            let xStep = Self.niceCeiling(xMax / 10)
            var tick = 0.0
            while tick <= xMax {
                out += String(
                    format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#555\">%@</text>", x(tick),
                    height - bottom + 16, Self.label(tick))
                tick += xStep
            }
            out += String(
                format: "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" fill=\"#555\">seconds</text>\n",
                (left + width - right) / 2, height - 6)
            out += String(
                format:
                    "<text x=\"14\" y=\"%.1f\" fill=\"#555\" transform=\"rotate(-90 14 %.1f)\" text-anchor=\"middle\">%@</text>\n",
                (top + height - bottom) / 2, (top + height - bottom) / 2, LoadReport.escape(yLabel))
            out += String(
                format: "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#999\"/>\n", left,
                width - right, y(yMin), y(yMin))
            for (at, label) in events {
                out += String(
                    format:
                        "<line x1=\"%.1f\" x2=\"%.1f\" y1=\"%.1f\" y2=\"%.1f\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>",
                    x(at), x(at), top, height - bottom)
                out +=
                    String(
                        format: "<text x=\"%.1f\" y=\"%.1f\" fill=\"#333\" font-size=\"11\" font-weight=\"600\">",
                        x(at) + 3, top + 10) + LoadReport.escape(label) + "</text>\n"
            }
            for line in series where !line.points.isEmpty {
                // Consecutive seconds form one run; a missing second breaks the line.
                var runs: [[(Double, Double)]] = []
                for point in line.points {
                    if let last = runs.last?.last, point.0 - last.0 <= 1.0001 {
                        runs[runs.count - 1].append(point)
                    } else {
                        runs.append([point])
                    }
                }
                for run in runs {
                    let path = run.map { String(format: "%.1f,%.1f", x($0.0), y($0.1)) }.joined(separator: " ")
                    if run.count == 1 {
                        out +=
                            String(format: "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"2\" fill=\"", x(run[0].0), y(run[0].1))
                            + line.color + "\"/>\n"
                    } else {
                        out +=
                            "<polyline fill=\"none\" stroke=\"\(line.color)\" stroke-width=\"1.8\" points=\"\(path)\"/>\n"
                    }
                }
            }
            var legendX = left
            for line in series {
                out +=
                    String(format: "<rect x=\"%.1f\" y=\"32\" width=\"12\" height=\"3\" fill=\"", legendX) + line.color
                    + "\"/>"
                out +=
                    String(format: "<text x=\"%.1f\" y=\"37\">", legendX + 16) + LoadReport.escape(line.name)
                    + "</text>"
                legendX += 40 + Double(line.name.count) * 7
            }
            return out + "\n</svg>"
        }

        /// 1, 2 or 5 times a power of ten, at or above `value`.
        static func niceCeiling(_ value: Double) -> Double {
            guard value > 0 else { return 1 }
            let power = pow(10, floor(log10(value)))
            for factor in [1.0, 2.0, 5.0, 10.0] where factor * power >= value { return factor * power }
            return 10 * power
        }

        static func label(_ value: Double) -> String {
            if value > 0 && value < 1 { return String(format: "%g", value) }
            if value >= 10_000 { return String(format: "%.0fk", value / 1000) }
            if value == value.rounded() { return String(format: "%.0f", value) }
            return String(format: "%.1f", value)
        }
    }
}
