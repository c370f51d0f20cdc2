// Smallest target: stays alive for the number of seconds given (default 600), then exits 0.
using System;
using System.Threading;

class Sleeper
{
    static int Main(string[] args)
    {
        int seconds = args.Length > 0 ? int.Parse(args[0]) : 600;
        Console.WriteLine("ready");
        Thread.Sleep(TimeSpan.FromSeconds(seconds));
        return 0;
    }
}
