// dnmon's demo app (`dnmon up --sample-app`) and the tests' metrics target: publishes EventCounters
// and System.Diagnostics.Metrics instruments whose names, units and values are known exactly, so
// both a newcomer and the tests can tell what a diagnostics session receives.
//
// Usage:
//   DemoApp [metrics [seconds]]  (default) counters + meter, ticking every 100 ms; runs until killed,
//                                or for <seconds> then exits 0.
//   DemoApp cpu [seconds]        a thread computing Fibonacci recursively forever plus a thread
//                                allocating short-lived arrays (so GCs happen); until killed/seconds.
//   DemoApp demo [seconds]       both of the above at once: what `dnmon up --sample-app` runs.
//   DemoApp exit N               exits with code N after N seconds (a target ending mid-capture).
// Prints "ready" once everything is set up. tests/targets/README.md lists the exact values.
//
// Built with Mono's mcs against Mono's mscorlib but run on .NET 8: EventCounter & co. and Meter
// do not exist in that mscorlib, so they are reached through reflection. Types such as string,
// Func<double> and KeyValuePair<,> compiled against mscorlib are forwarded to
// System.Private.CoreLib at run time, so they match the real APIs' parameter types.
using System;
using System.Collections.Generic;
using System.Diagnostics.Tracing;
using System.Linq;
using System.Reflection;
using System.Threading;

// The provider name is what sessions enable ("CustomProvider", as in dotnet-monitor's docs).
[EventSource(Name = "CustomProvider")]
sealed class CustomEventSource : EventSource
{
    public CustomEventSource() : base() { }
}

class Metrics
{
    // Static fields keep everything reachable: the runtime tracks EventSources only through weak
    // references, so a collected source (and its counters) would silently stop reporting.
    static CustomEventSource source;
    static object counter1, counter2, requests, polled;
    static object meter;
#pragma warning disable 414 // the observable instruments are only held: their callbacks are what matter
    static object myCounter, myHistogram, myUpDown, myGauge, taggedCounter, myObservableCounter, myObservableUpDown;
    static double observedTotal;
#pragma warning restore 414

    // Typed delegates bound once at setup, so a wrong overload fails before "ready" is printed.
    static Action<double> writeCounter1, writeCounter2, incrementRequests, recordHistogram;
    static Action<long> addMyCounter, addUpDown;
    static Action<long, KeyValuePair<string, object>> addTagged;

    static long sink;

    static int Main(string[] args)
    {
        string mode = args.Length > 0 ? args[0] : "metrics";
        switch (mode)
        {
            case "metrics":
                SetUpEventCounters();
                if (!SetUpMeter())
                {
                    // .NET Core 3.1 has EventCounters but no Meter: still useful for counter tests.
                    Console.WriteLine("no System.Diagnostics.Metrics.Meter on this runtime: EventCounters only");
                }
                new Thread(Tick) { IsBackground = true, Name = "metrics-tick" }.Start();
                return Run(args);
            case "cpu":
                new Thread(Compute) { IsBackground = true, Name = "fib" }.Start();
                new Thread(Allocate) { IsBackground = true, Name = "alloc" }.Start();
                return Run(args);
            case "demo":
                // dnmon up --sample-app: every metric kind, plus CPU and allocation work to trace.
                SetUpEventCounters();
                SetUpMeter();
                new Thread(Tick) { IsBackground = true, Name = "metrics-tick" }.Start();
                new Thread(Compute) { IsBackground = true, Name = "fib" }.Start();
                new Thread(Allocate) { IsBackground = true, Name = "alloc" }.Start();
                return Run(args);
            case "exit":
                int code = int.Parse(args[1]);
                Console.WriteLine("ready");
                Thread.Sleep(TimeSpan.FromSeconds(code));
                return code;
            default:
                Console.WriteLine("unknown mode " + mode + " (metrics | cpu | demo | exit N)");
                return 64;
        }
    }

    // Prints ready, then lives until killed or for args[1] seconds.
    static int Run(string[] args)
    {
        Console.WriteLine("ready");
        if (args.Length > 1)
        {
            Thread.Sleep(TimeSpan.FromSeconds(double.Parse(args[1], System.Globalization.CultureInfo.InvariantCulture)));
        }
        else
        {
            Thread.Sleep(Timeout.Infinite);
        }
        return 0;
    }

    // --- EventCounters ---------------------------------------------------------------------

    static void SetUpEventCounters()
    {
        source = new CustomEventSource();
        // On .NET 8 the counter types live in System.Private.CoreLib, the assembly of EventSource.
        Assembly coreLib = typeof(EventSource).Assembly;
        Type eventCounter = RequireType(coreLib, "System.Diagnostics.Tracing.EventCounter");
        Type incrementing = RequireType(coreLib, "System.Diagnostics.Tracing.IncrementingEventCounter");
        Type polling = RequireType(coreLib, "System.Diagnostics.Tracing.PollingCounter");

        counter1 = Activator.CreateInstance(eventCounter, "counter1", source);
        Set(counter1, "DisplayName", "Counter 1");
        Set(counter1, "DisplayUnits", "B");
        // Reported as "MyKey 1:MyValue 1,MyKey 2:MyValue 2" in the payload's Metadata field.
        AddMetadata(counter1, "MyKey 1", "MyValue 1");
        AddMetadata(counter1, "MyKey 2", "MyValue 2");

        counter2 = Activator.CreateInstance(eventCounter, "counter2", source);
        Set(counter2, "DisplayName", "Counter 2");
        Set(counter2, "DisplayUnits", "MB");

        requests = Activator.CreateInstance(incrementing, "requests", source);
        Set(requests, "DisplayName", "Requests");
        Set(requests, "DisplayRateTimeScale", TimeSpan.FromSeconds(1));

        polled = Activator.CreateInstance(polling, "polled", source, new Func<double>(() => 42.5));
        Set(polled, "DisplayName", "Polled Value");
        Set(polled, "DisplayUnits", "%");

        // WriteMetric has float and double overloads: ask for the double one explicitly.
        writeCounter1 = Bind<Action<double>>(counter1, "WriteMetric", typeof(double));
        writeCounter2 = Bind<Action<double>>(counter2, "WriteMetric", typeof(double));
        incrementRequests = Bind<Action<double>>(requests, "Increment", typeof(double));
    }

    static void AddMetadata(object counter, string key, string value)
    {
        counter.GetType().GetMethod("AddMetadata", new[] { typeof(string), typeof(string) })
            .Invoke(counter, new object[] { key, value });
    }

    // --- System.Diagnostics.Metrics ------------------------------------------------------------

    // False when the runtime has no Meter (before .NET 6); any other reflection failure throws.
    static bool SetUpMeter()
    {
        Type meterType = Type.GetType("System.Diagnostics.Metrics.Meter, System.Diagnostics.DiagnosticSource", false);
        if (meterType == null)
        {
            return false;
        }
        // Meter(string name, string version): other constructors add tags/scope or take MeterOptions.
        meter = meterType.GetConstructor(new[] { typeof(string), typeof(string) })
            .Invoke(new object[] { "CustomMeter", "1.0" });

        myCounter = Create(meterType, "CreateCounter", typeof(long), "myCounter", "{requests}", "Requests handled");
        myHistogram = Create(meterType, "CreateHistogram", typeof(double), "myHistogram", "ms", null);
        myUpDown = Create(meterType, "CreateUpDownCounter", typeof(long), "myUpDown", "{items}", null);
        taggedCounter = Create(meterType, "CreateCounter", typeof(long), "taggedCounter", null, null);
        myGauge = CreateObservable(meterType, "CreateObservableGauge", "myGauge", "MB", () => 21.5);
        // Observed once per interval: the absolute total grows by 7 each time, so its rate is 7.
        myObservableCounter = CreateObservable(meterType, "CreateObservableCounter", "myObservableCounter", "{ops}",
            () => observedTotal += 7);
        myObservableUpDown = CreateObservable(meterType, "CreateObservableUpDownCounter", "myObservableUpDown",
            "{connections}", () => 5);

        addMyCounter = Bind<Action<long>>(myCounter, "Add", typeof(long));
        recordHistogram = Bind<Action<double>>(myHistogram, "Record", typeof(double));
        addUpDown = Bind<Action<long>>(myUpDown, "Add", typeof(long));
        // Add(T, KeyValuePair<string, object>): the single-tag overload among Add's seven.
        addTagged = Bind<Action<long, KeyValuePair<string, object>>>(
            taggedCounter, "Add", typeof(long), typeof(KeyValuePair<string, object>));
        return true;
    }

    // Create{Counter,Histogram,UpDownCounter}<T>(string name, string unit, string description):
    // .NET 8 also has a 4-parameter overload with tags, so pick the one with exactly three strings.
    static object Create(Type meterType, string method, Type valueType, string name, string unit, string description)
    {
        MethodInfo definition = meterType.GetMethods()
            .Single(m => m.Name == method && m.IsGenericMethodDefinition
                && m.GetParameters().Select(p => p.ParameterType).SequenceEqual(new[] { typeof(string), typeof(string), typeof(string) }));
        return definition.MakeGenericMethod(valueType).Invoke(meter, new object[] { name, unit, description });
    }

    // CreateObservable{Gauge,Counter,UpDownCounter}<T> have overloads taking Func<T>,
    // Func<Measurement<T>> and Func<IEnumerable<Measurement<T>>> (each with and without tags):
    // pick (string name, Func<T> observeValue, string unit, string description).
    static object CreateObservable(Type meterType, string method, string name, string unit, Func<double> observe)
    {
        MethodInfo definition = meterType.GetMethods().Single(m =>
        {
            if (m.Name != method || !m.IsGenericMethodDefinition)
            {
                return false;
            }
            ParameterInfo[] ps = m.GetParameters();
            if (ps.Length != 4 || ps[0].ParameterType != typeof(string)
                || ps[2].ParameterType != typeof(string) || ps[3].ParameterType != typeof(string))
            {
                return false;
            }
            Type callback = ps[1].ParameterType;
            return callback.IsGenericType && callback.GetGenericTypeDefinition() == typeof(Func<>)
                && callback.GetGenericArguments()[0].IsGenericParameter;
        });
        return definition.MakeGenericMethod(typeof(double)).Invoke(meter, new object[] { name, observe, unit, null });
    }

    // --- the 100 ms tick -----------------------------------------------------------------------

    // Ticks follow a fixed 100 ms grid (not Sleep(100) after the work, which drifts), so a 1 s
    // interval almost always holds 10 ticks; when its edge lands on a tick it holds 9 or 11.
    static void Tick()
    {
        var route = new KeyValuePair<string, object>("route", "/a");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        for (long tick = 1; ; tick++)
        {
            writeCounter1(3);        // Mean 3 in every interval
            writeCounter2(126);      // Mean 126
            incrementRequests(5);    // ~50 per 1 s interval
            if (meter != null)       // null on runtimes without Meter
            {
                addMyCounter(2);     // rate ~20 per 1 s interval
                recordHistogram(42); // every quantile is 42
                addUpDown(3);        // net +2 per tick
                addUpDown(-1);
                addTagged(1, route); // tags "route=/a"
            }
            long wait = tick * 100 - clock.ElapsedMilliseconds;
            if (wait > 0)
            {
                Thread.Sleep((int)wait);
            }
        }
    }

    // --- cpu mode ------------------------------------------------------------------------------

    static long Fib(int n)
    {
        return n < 2 ? n : Fib(n - 1) + Fib(n - 2);
    }

    static void Compute()
    {
        while (true)
        {
            sink += Fib(25);
        }
    }

    // Short-lived arrays that die young, ~100 MB/s in bursts: gen-0 GCs keep happening, while the
    // pauses leave the second core to the rest of the machine (the Fibonacci thread owns one).
    static void Allocate()
    {
        int i = 0;
        while (true)
        {
            for (int k = 0; k < 200; k++)
            {
                byte[] garbage = new byte[1024 + (i++ % 4096)];
                garbage[0] = (byte)i;
            }
            Thread.Sleep(5);
        }
    }

    // --- reflection helpers --------------------------------------------------------------------

    static Type RequireType(Assembly assembly, string name)
    {
        Type type = assembly.GetType(name);
        if (type == null)
        {
            throw new TypeLoadException(name + " not found in " + assembly.FullName);
        }
        return type;
    }

    static void Set(object target, string property, object value)
    {
        target.GetType().GetProperty(property).SetValue(target, value, null);
    }

    static T Bind<T>(object target, string method, params Type[] parameterTypes) where T : class
    {
        MethodInfo info = target.GetType().GetMethod(method, parameterTypes);
        if (info == null)
        {
            throw new MissingMethodException(target.GetType().FullName, method);
        }
        return (T)(object)Delegate.CreateDelegate(typeof(T), target, info);
    }
}
