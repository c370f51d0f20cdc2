// Prints the Arguments each EventPipe session hands to its EventSource, so a test can check what
// the runtime received from a filter-data string. Also answers .NET's own parsers for a list of
// inputs (`ArgsEcho parse`), the oracle for dnmon_core.queries.
using System;
using System.Collections.Generic;
using System.Diagnostics.Tracing;
using System.Globalization;
using System.Text;
using System.Threading;

[EventSource(Name = "Dnmon-ArgsEcho")]
sealed class ArgsEchoSource : EventSource
{
    public static readonly ArgsEchoSource Log = new ArgsEchoSource();

    protected override void OnEventCommand(EventCommandEventArgs command)
    {
        if (command.Command != EventCommand.Enable)
            return;
        var parts = new List<string>();
        if (command.Arguments != null)
            foreach (KeyValuePair<string, string> pair in command.Arguments)
                parts.Add(Hex(pair.Key) + ":" + Hex(pair.Value));
        Console.WriteLine("args " + parts.Count + " " + string.Join(",", parts.ToArray()));
    }

    [Event(1)]
    public void Tick(int n) { WriteEvent(1, n); }

    // UTF-16 code units in hex: every character survives stdout unambiguously.
    public static string Hex(string text)
    {
        if (text == null) return "null";
        var sb = new StringBuilder();
        foreach (char c in text) sb.Append(((int)c).ToString("x4"));
        return sb.Length == 0 ? "-" : sb.ToString();
    }
}

class ArgsEcho
{
    static string FromHex(string hex)
    {
        var sb = new StringBuilder();
        for (int i = 0; i + 4 <= hex.Length; i += 4)
            sb.Append((char)int.Parse(hex.Substring(i, 4), NumberStyles.HexNumber));
        return sb.ToString();
    }

    // One input per line (hex UTF-16 as above), one answer line each:
    // int|long|bool|guid|hex|float results, "x" when TryParse fails.
    static void Parse()
    {
        string line;
        while ((line = Console.ReadLine()) != null)
        {
            string s = line == "-" ? "" : FromHex(line);
            int i; long l; bool b; Guid g; float f;
            string a = int.TryParse(s, NumberStyles.Integer, CultureInfo.InvariantCulture, out i) ? i.ToString(CultureInfo.InvariantCulture) : "x";
            string d = long.TryParse(s, NumberStyles.AllowLeadingSign, CultureInfo.InvariantCulture, out l) ? l.ToString(CultureInfo.InvariantCulture) : "x";
            string h = long.TryParse(s, NumberStyles.AllowHexSpecifier, CultureInfo.InvariantCulture, out l) ? l.ToString(CultureInfo.InvariantCulture) : "x";
            string c = bool.TryParse(s, out b) ? (b ? "true" : "false") : "x";
            string u = Guid.TryParse(s, out g) ? g.ToString("D") : "x";
            string r = float.TryParse(s, NumberStyles.Float | NumberStyles.AllowThousands, CultureInfo.InvariantCulture, out f) ? BitConverter.ToInt32(BitConverter.GetBytes(f), 0).ToString(CultureInfo.InvariantCulture) : "x";
            Console.WriteLine(a + " " + d + " " + h + " " + c + " " + u + " " + r);
        }
    }

    static int Main(string[] args)
    {
        if (args.Length > 0 && args[0] == "parse")
        {
            Parse();
            return 0;
        }
        int seconds = args.Length > 0 ? int.Parse(args[0]) : 600;
        ArgsEchoSource.Log.Tick(0);
        Console.WriteLine("ready");
        DateTime end = DateTime.UtcNow.AddSeconds(seconds);
        int n = 0;
        while (DateTime.UtcNow < end)
        {
            ArgsEchoSource.Log.Tick(++n);
            Thread.Sleep(100);
        }
        return 0;
    }
}
