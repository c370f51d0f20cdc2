// CPU-busy target for trace captures: a worker thread computes Fibonacci numbers in a loop.
// Usage: Busy [seconds=600] [cpu|alloc]. "alloc" also allocates short-lived objects on a second
// thread (verbose GC/allocation events for large benchmark traces). Prints "ready" once running.
using System;
using System.Collections.Generic;
using System.Text;
using System.Threading;

class Busy
{
    static long sink;

    static long Fib(int n)
    {
        return n < 2 ? n : Fib(n - 1) + Fib(n - 2);
    }

    static void Compute()
    {
        while (true)
        {
            sink += Fib(24);
        }
    }

    static void Allocate()
    {
        var keep = new List<object>();
        var text = new StringBuilder();
        int i = 0;
        while (true)
        {
            text.Clear();
            text.Append("item-").Append(i++);
            keep.Add(text.ToString());
            keep.Add(new byte[64 + (i & 511)]); // a mask stays positive when i wraps
            if (keep.Count > 20000)
            {
                keep.Clear();
            }
        }
    }

    static int Main(string[] args)
    {
        int seconds = args.Length > 0 ? int.Parse(args[0]) : 600;
        string mode = args.Length > 1 ? args[1] : "cpu";
        new Thread(Compute) { IsBackground = true, Name = "fib" }.Start();
        if (mode == "alloc")
        {
            new Thread(Allocate) { IsBackground = true, Name = "alloc" }.Start();
        }
        Console.WriteLine("ready");
        Thread.Sleep(TimeSpan.FromSeconds(seconds));
        return 0;
    }
}
